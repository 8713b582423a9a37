"""Quantisation-aware training (QAT): PaddleSlim's dygraph QAT settings, applied to a built model.

A student config's `quant:` section (or `--quant_config Q.yml`, a yaml holding that section) turns on QAT:

    quant:
      weight_quantize_type: channel_wise_abs_max      # or abs_max
      activation_quantize_type: moving_average_abs_max
      weight_bits: 8
      activation_bits: 8
      dtype: int8
      window_size: 10000                              # PaddleSlim's key; only range_abs_max would read it
      moving_rate: 0.9                                # decay of the activations' moving-average scale
      quantizable_layer_type: [Conv2D, Linear]        # also Conv2DTranspose
      use_pact: true                                  # PACT clipping of activations (ACT's QuantAware key);
                                                      # also `name: pact` (PaddleClas) or
                                                      # `activation_preprocess_type: PACT` (PaddleSlim, ppdet)
      onnx_format: true                               # the int8 export's op format (PaddleSlim's default)

    python tools/train.py -c configs/cls/mobilenetv3_student_rgb32.yml --quant_config Q.yml \
        --init_weights output/student/best_model/model.pdparams

Every key and default is PaddleSlim 2.6's `paddleslim.QAT(config)` (what ppdet's `slim: QAT` and PaddleClas's
`Slim: quant` use); the layers are wrapped by Paddle's `ImperativeQuantAware` directly, as PaddleSlim does, so
the model's state dict (weights, fake-quant scales, moving-average state, PACT alphas) has the keys PaddleSlim
gives it. Paddle 3.3.1's new `paddle.quantization.QAT(QuantConfig)` is not used: its convert() fails
(TypeError, zero_point None in paddle/nn/quant/format.py).

The public names (other modules build on them; keep them stable):

    settings = quant_settings(section)           # a validated QuantSettings, or ConfigError naming the key
    settings = quant_settings_of(cfg)            # from a config's `quant:` (or PaddleClas `Slim.quant`), or None
    model = quantize_model(model, settings)      # wraps the layers in place (once: a second call is a no-op)
    is_quantized(model)                          # whether fake-quant layers are in the model
    save_quantized_inference_model(model, "out/model", input_spec, settings)   # the int8 inference model

A QAT model's weights differ from the fp32 model's in their keys (every wrapped layer's own tensors move
under `_layer.`, and scales are added): `state_is_quantized(state)` tells them apart, and `weights_order()`
says whether a model must be quantised before a weights file is loaded into it (a QAT checkpoint) or after
(fp32 weights QAT starts from), or that the file cannot be used as asked (a clear error naming the flag).
"""
import re
from dataclasses import asdict, dataclass, field
from typing import Optional, Tuple

import paddle

from slim.distill.errors import ConfigError

#: the flag that gives a quant config file (named in errors)
QUANT_FLAG = "--quant_config"
#: PaddleSlim 2.6's dygraph QAT defaults (paddleslim/dygraph/quant/qat.py _quant_config_default)
DEFAULTS = {
    "weight_quantize_type": "channel_wise_abs_max",
    "activation_quantize_type": "moving_average_abs_max",
    "weight_bits": 8,
    "activation_bits": 8,
    "dtype": "int8",
    "window_size": 10000,
    "moving_rate": 0.9,
    "quantizable_layer_type": ["Conv2D", "Linear"],
    "weight_preprocess_type": None,
    "activation_preprocess_type": None,
    "fuse_conv_bn": False,
    "onnx_format": True,
}
#: what Paddle 3.3.1's ImperativeQuantAware accepts (PaddleSlim lists more; Paddle rejects them)
WEIGHT_TYPES = ("channel_wise_abs_max", "abs_max")
ACTIVATION_TYPES = ("moving_average_abs_max",)
LAYER_TYPES = ("Conv2D", "Linear", "Conv2DTranspose")
PREPROCESS_TYPES = ("PACT",)
#: keys read besides DEFAULTS: ACT's `use_pact`, PaddleClas's `name: pact`, ppdet's `print_model` (logging only)
ALIASES = ("use_pact", "name", "print_model")
#: state-dict keys only a QAT model has (the fake-quant and output-scale layers, PACT)
_QUANT_KEY = re.compile(r"(^|\.)_(fake_quant_(weight|input)|ma_output_scale|act_preprocess|weight_preprocess)\.")


@dataclass(frozen=True)
class QuantSettings:
    """Validated QAT settings (PaddleSlim's keys). `quanter_config()` is the dict PaddleSlim's QAT takes."""
    weight_quantize_type: str = DEFAULTS["weight_quantize_type"]
    activation_quantize_type: str = DEFAULTS["activation_quantize_type"]
    weight_bits: int = 8
    activation_bits: int = 8
    dtype: str = "int8"
    window_size: int = 10000
    moving_rate: float = 0.9
    quantizable_layer_type: Tuple[str, ...] = ("Conv2D", "Linear")
    weight_preprocess_type: Optional[str] = None
    activation_preprocess_type: Optional[str] = None
    fuse_conv_bn: bool = False
    onnx_format: bool = True
    source: str = field(default="quant", compare=False)  # where the settings came from (for messages)

    @property
    def pact(self) -> bool:
        return self.activation_preprocess_type == "PACT" or self.weight_preprocess_type == "PACT"

    def quanter_config(self) -> dict:
        out = asdict(self)
        out.pop("source")
        out["quantizable_layer_type"] = list(self.quantizable_layer_type)
        return out

    def describe(self) -> str:
        pact = [w for w, t in (("activations", self.activation_preprocess_type),
                               ("weights", self.weight_preprocess_type)) if t == "PACT"]
        return (f"QAT ({self.source}): {', '.join(self.quantizable_layer_type)} layers, weights "
                f"{self.weight_quantize_type} {self.weight_bits}-bit, activations {self.activation_quantize_type} "
                f"{self.activation_bits}-bit (moving_rate {self.moving_rate:g})"
                + (f", PACT on the {' and '.join(pact)}" if pact else "")
                + (", conv+bn fused first" if self.fuse_conv_bn else ""))


def _close(name, known):
    import difflib
    match = difflib.get_close_matches(str(name), list(known), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _bits(value, key, where):
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 16:
        raise ConfigError(f"{where}.{key} must be a whole number of bits from 1 to 16 (8 for int8), got {value!r}.")
    return value


def _preprocess(value, key, where):
    if value in (None, False, "None", "none", ""):
        return None
    if str(value).upper() not in PREPROCESS_TYPES:
        raise ConfigError(f"{where}.{key} must be PACT or null, got {value!r}.")
    return "PACT"


def quant_settings(section, where: str = "quant") -> QuantSettings:
    """A `quant:` section -> QuantSettings; a ConfigError naming the key for anything PaddleSlim's dygraph QAT
    (on Paddle 3.3.1) would not accept. `{}` or `true` means PaddleSlim's defaults."""
    if section is True:
        section = {}
    if not isinstance(section, dict):
        raise ConfigError(f"{where} must be a mapping of PaddleSlim QAT settings, e.g. {{weight_quantize_type: "
                          f"channel_wise_abs_max, activation_quantize_type: moving_average_abs_max}}, got {section!r}.")
    unknown = [k for k in section if k not in DEFAULTS and k not in ALIASES]
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}{_close(unknown[0], list(DEFAULTS) + list(ALIASES))}; "
                          f"the keys are PaddleSlim's: {', '.join(list(DEFAULTS) + list(ALIASES))}.")
    values = dict(DEFAULTS)
    values.update({k: v for k, v in section.items() if k in DEFAULTS})
    name = section.get("name")
    if name is not None:  # PaddleClas: Slim.quant.name, which only knows pact
        if str(name).lower() != "pact":
            raise ConfigError(f"{where}.name {name!r}: PaddleClas's quantisation has one method, `name: pact` (QAT with "
                              f"PACT clipping of activations); give that, or leave `name` out for plain QAT.")
        values["activation_preprocess_type"] = "PACT"
    use_pact = section.get("use_pact")
    if use_pact is not None:
        if not isinstance(use_pact, bool):
            raise ConfigError(f"{where}.use_pact must be true or false, got {use_pact!r}.")
        if use_pact:
            values["activation_preprocess_type"] = "PACT"
    wtype, atype = values["weight_quantize_type"], values["activation_quantize_type"]
    if wtype not in WEIGHT_TYPES:
        raise ConfigError(f"{where}.weight_quantize_type {wtype!r} is not supported by Paddle's dygraph QAT; use "
                          f"{' or '.join(WEIGHT_TYPES)}{_close(wtype, WEIGHT_TYPES)}.")
    if atype not in ACTIVATION_TYPES:
        raise ConfigError(f"{where}.activation_quantize_type {atype!r} is not supported by Paddle's dygraph QAT; use "
                          f"{' or '.join(ACTIVATION_TYPES)} (abs_max and range_abs_max exist only in the static "
                          f"graph API).")
    _bits(values["weight_bits"], "weight_bits", where)
    _bits(values["activation_bits"], "activation_bits", where)
    if values["dtype"] != "int8":
        raise ConfigError(f"{where}.dtype {values['dtype']!r}: PaddleSlim's QAT quantises to int8 only.")
    window = values["window_size"]
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ConfigError(f"{where}.window_size must be a positive whole number, got {window!r}.")
    rate = values["moving_rate"]
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 < float(rate) < 1.0:
        raise ConfigError(f"{where}.moving_rate must be a number between 0 and 1 (e.g. 0.9), got {rate!r}.")
    layers = values["quantizable_layer_type"]
    if isinstance(layers, str):
        layers = [layers]
    if not isinstance(layers, (list, tuple)) or not layers:
        raise ConfigError(f"{where}.quantizable_layer_type must list layer types, e.g. [Conv2D, Linear], got "
                          f"{layers!r}.")
    for layer in layers:
        if layer not in LAYER_TYPES:
            raise ConfigError(f"{where}.quantizable_layer_type: {layer!r} cannot be quantised by Paddle's dygraph QAT; "
                              f"the types are {', '.join(LAYER_TYPES)}{_close(layer, LAYER_TYPES)}.")
    for key in ("fuse_conv_bn", "onnx_format"):
        if not isinstance(values[key], bool):
            raise ConfigError(f"{where}.{key} must be true or false, got {values[key]!r}.")
    return QuantSettings(
        weight_quantize_type=wtype, activation_quantize_type=atype, weight_bits=values["weight_bits"],
        activation_bits=values["activation_bits"], dtype="int8", window_size=window, moving_rate=float(rate),
        quantizable_layer_type=tuple(dict.fromkeys(layers)),
        weight_preprocess_type=_preprocess(values["weight_preprocess_type"], "weight_preprocess_type", where),
        activation_preprocess_type=_preprocess(values["activation_preprocess_type"], "activation_preprocess_type",
                                               where),
        fuse_conv_bn=values["fuse_conv_bn"], onnx_format=values["onnx_format"], source=where)


def quant_section_of(cfg):
    """(the raw QAT section of a config, where it is) or (None, None): `quant:`, or PaddleClas's `Slim.quant`."""
    if not isinstance(cfg, dict):
        return None, None
    if cfg.get("quant") not in (None, False):
        return cfg["quant"], "quant"
    slim = cfg.get("Slim")
    if isinstance(slim, dict) and slim.get("quant") not in (None, False):
        return slim["quant"], "Slim.quant"
    return None, None


def quant_settings_of(cfg) -> Optional[QuantSettings]:
    """The QAT settings a config asks for (`quant:` or PaddleClas's `Slim.quant`), or None."""
    section, where = quant_section_of(cfg)
    return None if section is None else quant_settings(section, where)


# ----- PACT ---------------------------------------------------------------------------------------------
class PACT(paddle.nn.Layer):
    """PACT (Choi et al. 2018) as PaddleSlim defines it: clip(x, -alpha, alpha) with a learned alpha, written
    x - relu(x - alpha) + relu(-alpha - x); alpha starts at 100 with a learning-rate multiplier of 1000 (the
    parameter is `alpha`, so state dicts match PaddleSlim's)."""

    def __init__(self):
        super().__init__()
        attr = paddle.ParamAttr(initializer=paddle.nn.initializer.Constant(100.0), learning_rate=1000.0)
        self.alpha = self.create_parameter(shape=[1], attr=attr, dtype="float32")

    def forward(self, x):
        relu = paddle.nn.functional.relu
        return x - relu(x - self.alpha) + relu(-self.alpha - x)


# ----- wrapping the layers ----------------------------------------------------------------------------
def _quanter(settings: QuantSettings, with_preprocess=True):
    return paddle.quantization.ImperativeQuantAware(
        quantizable_layer_type=list(settings.quantizable_layer_type),
        weight_quantize_type=settings.weight_quantize_type,
        activation_quantize_type=settings.activation_quantize_type,
        weight_bits=settings.weight_bits, activation_bits=settings.activation_bits,
        moving_rate=settings.moving_rate, fuse_conv_bn=settings.fuse_conv_bn,
        weight_preprocess_layer=PACT if with_preprocess and settings.weight_preprocess_type == "PACT" else None,
        act_preprocess_layer=PACT if with_preprocess and settings.activation_preprocess_type == "PACT" else None,
        onnx_format=settings.onnx_format)


def is_quantized(model) -> bool:
    """Whether `model` holds Paddle's fake-quant layers (it was quantised for QAT)."""
    from paddle.nn.quant import quant_layers
    return any(type(layer).__module__ == quant_layers.__name__ for layer in model.sublayers(include_self=True))


def quant_settings_on(model) -> Optional[QuantSettings]:
    """The settings `quantize_model` applied to `model` (None when it did not quantise it)."""
    return getattr(model, "_slim_quant_settings", None)


def _reparameterize(model, log):
    """Structural re-parameterisation first, as PaddleClas (`re_parameterize`) and ppdet (`convert_to_deploy`)
    do before QAT: the deployed structure is what gets quantised."""
    done = []
    for layer in model.sublayers(include_self=True):
        for method in ("re_parameterize", "convert_to_deploy"):
            if callable(getattr(layer, method, None)):
                getattr(layer, method)()
                done.append(method)
                break
    if done and log is not None:
        log(f"QAT: {len(done)} layer(s) re-parameterised first ({', '.join(sorted(set(done)))}), as PaddleClas "
            f"and ppdet do before quantising")


def quantize_model(model, settings: QuantSettings, log=None):
    """Wrap the quantisable layers of `model` in place (fake-quant weights and input activations, output
    scales) and return it. A model quantised by an earlier call with the same settings is returned as it is;
    with other settings, or quantised by someone else, it is a ConfigError (wrapping twice would stack
    fake-quant layers)."""
    if not isinstance(settings, QuantSettings):
        raise TypeError("quantize_model needs a QuantSettings (quant_settings(section))")
    if is_quantized(model):
        previous = quant_settings_on(model)
        if previous == settings:
            return model
        raise ConfigError(f"The model is already quantised ({previous.describe() if previous else 'by other code'}); "
                          f"it cannot be quantised again with {settings.describe()}.")
    _reparameterize(model, log)
    training = model.training
    _quanter(settings).quantize(model)
    model.train() if training else model.eval()
    model._slim_quant_settings = settings
    if log is not None:
        wrapped = sum(1 for layer in model.sublayers() if type(layer).__name__.startswith("Quantized"))
        log(f"{settings.describe()}: {wrapped} layer(s) quantised")
    return model


# ----- weights and checkpoints ------------------------------------------------------------------------
def state_is_quantized(state) -> bool:
    """Whether a state dict (or its keys) is a QAT model's: fake-quant scales or output-scale state in it."""
    return any(_QUANT_KEY.search(str(k)) for k in state)


def quant_keys(state, limit=3):
    return [k for k in state if _QUANT_KEY.search(str(k))][:limit]


def weights_order(state, settings: Optional[QuantSettings], what: str, training: bool = True,
                  flag: str = QUANT_FLAG) -> Optional[str]:
    """When to quantise a model that will load `state`: "before" (a QAT checkpoint: its scales load into the
    wrapped layers), "after" (fp32 weights QAT starts from), or None (no QAT). Mismatches are ConfigErrors:
    QAT weights with no quant settings (the flag is named), and, outside training, fp32 weights with quant
    settings (the fake-quant scales would be untrained)."""
    quantized = state_is_quantized(state)
    if quantized and settings is None:
        raise ConfigError(f"{what} hold a quantisation-aware (QAT) model (fake-quant scales such as "
                          f"{', '.join(quant_keys(state))}), but no quantisation settings were given: pass "
                          f"{flag} Q.yml with the quant settings of the run that trained them (or give the config its "
                          f"`quant:` section; PaddleClas configs: `Slim: {{quant: {{name: pact}}}}`), so that the model "
                          f"is built quantised before they load.")
    if quantized:
        return "before"
    if settings is None:
        return None
    if not training:
        raise ConfigError(f"{what} hold an fp32 model (no fake-quant scales), but quantisation settings were given "
                          f"({settings.source}): a QAT model needs the scales that QAT training learns. Drop {flag} "
                          f"(and `quant:`) to use these weights as they are, or give the checkpoint of a QAT run.")
    return "after"


# ----- the int8 inference model -----------------------------------------------------------------------
def _without_preprocess(model):
    """Detach PACT (it only clips during training; the scales it shaped stay): [(layer, attr, PACT layer)]."""
    removed = []
    for layer in model.sublayers(include_self=True):
        for attr in ("_act_preprocess", "_weight_preprocess"):
            pre = getattr(layer, attr, None) if type(layer).__name__.startswith("Quantized") else None
            if pre is not None:
                removed.append((layer, attr, pre))
                setattr(layer, attr, None)
    return removed


def save_quantized_inference_model(model, path_prefix: str, input_spec, settings: QuantSettings):
    """Write the int8 inference model of a quantised `model` (PATH_PREFIX.pdmodel/.json and .pdiparams, with
    quantize/dequantize ops and their scales) through the quanter's `save_quantized_model`, as PaddleSlim's
    QAT.save_quantized_model does: PACT layers are left out of the export (PaddleSlim and PaddleClas export
    without them) and put back afterwards; the model is left in the mode it was in."""
    if not is_quantized(model):
        raise ConfigError("save_quantized_inference_model needs a quantised model (quantize_model first, with the "
                          "weights of a QAT run loaded).")
    training = model.training
    removed = _without_preprocess(model)
    try:
        model.eval()
        _quanter(settings, with_preprocess=False).save_quantized_model(model, path_prefix, input_spec=input_spec)
    finally:
        for layer, attr, pre in removed:
            setattr(layer, attr, pre)
        if not paddle.in_dynamic_mode():
            paddle.disable_static()
        model.train() if training else model.eval()
    return path_prefix


def copy_settings(settings: QuantSettings, **changes) -> QuantSettings:
    """A copy of `settings` with some fields changed (e.g. the source named in messages)."""
    values = {k: getattr(settings, k) for k in settings.__dataclass_fields__}
    values.update(changes)
    return QuantSettings(**values)


__all__ = ["QuantSettings", "quant_settings", "quant_settings_of", "quantize_model", "is_quantized",
           "save_quantized_inference_model", "state_is_quantized", "weights_order", "copy_settings", "PACT",
           "QUANT_FLAG"]
