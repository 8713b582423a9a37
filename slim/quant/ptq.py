"""Post-training quantisation (PTQ): int8 scales from a few calibration batches, no training; the baseline QAT is
measured against.

    from slim.quant.ptq import PTQSettings, calibrate
    model = calibrate(model, batches, PTQSettings(algo="KL"), quant=quant_settings({}))   # model in eval mode
    # then the int8 export of a QAT model: slim.apps.export.save_program / tools/export.py

Paddle's `ImperativePTQ` (paddle.quantization, what PaddleSlim 2.6's dygraph `PTQ` wraps) does the calibration:
forward hooks collect the inputs and outputs of every quantisable layer over the calibration batches; activation
scales from them by `algo` (KL: the threshold minimising the KL divergence of the int8 histogram, Paddle's
KLQuantizer, its default; hist: a percentile of the histogram; abs_max: the largest value seen), weights per output
channel (channel_wise_abs_max) or per tensor (abs_max). The calibrated layers become the fake-quant layers QAT
trains (`QuantizedConv2D`, ... with the scales set), marked with the quant settings they stand for, so the int8
export is the same as a QAT checkpoint's. Checked on Paddle 3.3.1: quantize, calibration and conversion work;
ImperativePTQ's own `save_quantized_model` does not (it traces the fake-quant layers into a PIR program, which they
refuse: `TypeError: The type of '%X' in operator fake_quantize_dequantize_moving_average_abs_max should be one of
[str, bytes, Variable]`), hence the shared export.
"""
from dataclasses import dataclass
from typing import Iterable

import paddle

from slim.distill.errors import ConfigError
from .qat import QuantSettings, copy_settings, quant_settings

ALGOS = ("KL", "hist", "abs_max")


@dataclass(frozen=True)
class PTQSettings:
    """How activation scales are calibrated (`algo`: KL | hist | abs_max; `hist_percent` for hist)."""
    algo: str = "KL"
    hist_percent: float = 0.99999

    def describe(self) -> str:
        return f"PTQ ({self.algo}{f', percentile {self.hist_percent:g}' if self.algo == 'hist' else ''})"


def _ptq_config(ptq: PTQSettings, quant: QuantSettings):
    from paddle.quantization.imperative import ptq_quantizer as q
    from paddle.quantization.imperative.ptq_config import PTQConfig
    if ptq.algo not in ALGOS:
        raise ConfigError(f"--algo {ptq.algo!r}: post-training calibration is one of {', '.join(ALGOS)}.")
    bits = quant.activation_bits
    activation = {"KL": lambda: q.KLQuantizer(quant_bits=bits),
                  "hist": lambda: q.HistQuantizer(quant_bits=bits, hist_percent=ptq.hist_percent),
                  "abs_max": lambda: q.AbsmaxQuantizer(quant_bits=bits)}[ptq.algo]()
    weight = (q.PerChannelAbsmaxQuantizer(quant_bits=quant.weight_bits)
              if quant.weight_quantize_type == "channel_wise_abs_max" else q.AbsmaxQuantizer(quant_bits=quant.weight_bits))
    return PTQConfig(activation, weight)


def _check_quant(quant: QuantSettings):
    if quant.pact:
        raise ConfigError("PTQ calibrates scales without training: PACT (use_pact / name: pact) needs QAT; drop it "
                          "from the quant settings given to tools/ptq.py.")
    if set(quant.quantizable_layer_type) - {"Conv2D", "Linear"}:
        raise ConfigError(f"PTQ quantises Conv2D and Linear layers (Paddle's ImperativePTQ); quantizable_layer_type "
                          f"{list(quant.quantizable_layer_type)} asks for more.")


def calibrate(model, batches: Iterable, ptq: PTQSettings = PTQSettings(), quant: QuantSettings = None, log=print):
    """Calibrate `model` in place on `batches` (each: the model's positional inputs, a tuple of tensors, or one
    tensor), convert it to fake-quant layers with the calibrated scales and return it (eval mode). `quant` gives
    the weight quantisation, bits and export format (PaddleSlim's keys; default its defaults)."""
    from paddle.quantization import ImperativePTQ
    from .qat import is_quantized
    quant = quant or quant_settings({})
    _check_quant(quant)
    if is_quantized(model):
        raise ConfigError("The model is already quantised (a QAT checkpoint?): PTQ calibrates an fp32 model; give "
                          "the fp32 weights.")
    ptq_tool = ImperativePTQ(_ptq_config(ptq, quant))
    model.eval()
    ptq_tool.quantize(model, inplace=True)
    seen = 0
    with paddle.no_grad():
        for inputs in batches:
            model(*(inputs if isinstance(inputs, (tuple, list)) else (inputs,)))
            seen += 1
    if not seen:
        raise ConfigError("PTQ got no calibration batch: the training set is empty or --calib_batches is 0.")
    ptq_tool._convert(model)  # thresholds -> QuantizedConv2D / QuantizedLinear with the scales set
    model.eval()
    model._slim_quant_settings = copy_settings(quant, source=f"{ptq.describe()} of {seen} batch(es)")
    layers = sum(1 for layer in model.sublayers() if type(layer).__name__.startswith("Quantized"))
    log(f"{ptq.describe()}: calibrated on {seen} batch(es); {layers} layer(s) quantised "
        f"(weights {quant.weight_quantize_type} {quant.weight_bits}-bit)")
    return model
