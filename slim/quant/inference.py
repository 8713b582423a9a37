"""Paddle Inference for exported models: the predictor (fp32 or int8; oneDNN on CPU, GPU, TensorRT), running it on
numpy arrays, and its latency.

    from slim.quant.inference import InferenceSettings, Predictor
    predictor = Predictor("output/export", InferenceSettings(precision="int8", threads=2))
    logits, = predictor.run([image])                  # numpy arrays in the order of the model's inputs
    timing = predictor.latency([image[:1]], warmup=10, repeats=50)   # timing.median_ms, batch 1

An export folder holds `model.json` (fp32, a PIR program, tools/export.py) or `model.pdmodel` (int8, an old-IR
program with quantize/dequantize ops and their scales: tools/export.py of a QAT checkpoint, tools/ptq.py), or
PaddleClas's `inference.*`. CPU int8 runs through oneDNN (`enable_mkldnn_int8`), which Paddle 3.3.1 offers only on
old-IR programs; GPU int8 needs TensorRT (`--use_tensorrt`), without it the quantize/dequantize ops run in fp32.
An fp32 export asked to run in int8 is an error (it has no scales); an int8 export run in fp32 runs its
quantize/dequantize ops in fp32 (what the dygraph QAT model computes).

Latency is the wall time of `run()` (copy in, run, copy out) per call, the median over `repeats` calls after
`warmup` calls; other processes on the machine make it noisy, so compare models side by side in one process.
"""
import glob
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

from slim.distill.errors import ConfigError

PRECISIONS = ("fp32", "int8")
#: file prefixes of an export folder, in the order they are looked for
MODEL_NAMES = ("model", "inference")
#: the ops oneDNN runs in int8 (`enable_mkldnn_int8(op_types)`; the names after its fusion passes, which run first:
#: a convolution with its bias, activation or residual add is `fused_conv2d`): convolutions and the ops between
#: them. Not `fc` / `matmul` (the Linear layers): on the MNIST ConvNet student oneDNN's int8 fc cost 1.1-1.3 top-1
#: points against the fp32 run of the same int8 export (0.936-0.938 vs 0.949), convolutions 0.1-0.6; Linear layers
#: run in fp32 (a small share of a CNN's time).
INT8_OP_TYPES = ("conv2d", "fused_conv2d", "depthwise_conv2d", "pool2d", "elementwise_add", "fused_elementwise_add",
                 "concat")
#: op names only a quantised program holds (old-IR fake-quant or ONNX-style quantize_linear)
_QUANT_OP_MARKERS = (b"quantize_linear", b"fake_quantize", b"fake_channel_wise_quantize", b"fake_dequantize")


@dataclass(frozen=True)
class InferenceSettings:
    """How Paddle Inference runs a model: device ("cpu", "gpu", "gpu:N"), precision (fp32|int8), CPU threads,
    oneDNN on CPU (Paddle Inference's default), TensorRT on GPU."""
    device: str = "cpu"
    precision: str = "fp32"
    threads: int = 1
    onednn: bool = True
    use_tensorrt: bool = False
    trt_workspace_mb: int = 1024
    trt_min_subgraph_size: int = 3
    gpu_memory_mb: int = 512

    def describe(self) -> str:
        if self.device.startswith("gpu"):
            engine = f"TensorRT {self.precision}" if self.use_tensorrt else \
                ("GPU (int8 model, quantize ops in fp32: int8 needs --use_tensorrt)" if self.precision == "int8"
                 else "GPU fp32")
            return f"{self.device}, {engine}"
        engine = ("oneDNN int8" if self.precision == "int8" else "oneDNN fp32") if self.onednn else "plain CPU fp32"
        return f"CPU, {engine}, {self.threads} thread(s)"


@dataclass(frozen=True)
class Latency:
    """Per-call wall times (ms) after warm-up."""
    times_ms: tuple
    warmup: int

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    def describe(self) -> str:
        q = np.percentile(self.times_ms, [10, 90])
        return (f"median {self.median_ms:.2f} ms (p10 {q[0]:.2f}, p90 {q[1]:.2f}) over {len(self.times_ms)} runs "
                f"after {self.warmup} warm-up")


def find_model(path: str):
    """(model file, params file or "") of an export: a folder holding model.json / model.pdmodel (or PaddleClas's
    inference.*), or a path prefix. A folder with both holds an fp32 and an int8 program: the int8 one
    (.pdmodel) is picked for int8 by `Predictor`; here the first found is returned."""
    candidates = []
    if os.path.isdir(path):
        for name in MODEL_NAMES:
            candidates += [os.path.join(path, name + ext) for ext in (".pdmodel", ".json")]
    else:
        prefix = path[:-len(".pdmodel")] if path.endswith(".pdmodel") else \
            path[:-len(".json")] if path.endswith(".json") else path
        candidates = [prefix + ".pdmodel", prefix + ".json"]
    found = [c for c in candidates if os.path.isfile(c)]
    if not found:
        listing = ", ".join(sorted(os.path.basename(p) for p in glob.glob(os.path.join(path, "*")))) \
            if os.path.isdir(path) else "no such folder"
        raise ConfigError(f"--inference_model {path}: no exported model there (looked for model.json, model.pdmodel, "
                          f"inference.json, inference.pdmodel; found: {listing or 'nothing'}). Export one with "
                          f"`python tools/export.py -c CONFIG --model_path W --save_dir {path}`.")
    model = found[0]
    params = model.rsplit(".", 1)[0] + ".pdiparams"
    return model, (params if os.path.isfile(params) else "")  # a model without parameters has no .pdiparams


def pick_model(path: str, precision: str = "fp32"):
    """`find_model` for a precision: of a folder holding an fp32 (.json) and an int8 (.pdmodel) program, the one
    the precision asks for."""
    if os.path.isdir(path):
        for name in MODEL_NAMES:
            for ext in ((".pdmodel", ".json") if precision == "int8" else (".json", ".pdmodel")):
                if os.path.isfile(os.path.join(path, name + ext)):
                    return find_model(os.path.join(path, name + ext))
    return find_model(path)


def is_quantized_program(model_file: str) -> bool:
    """Whether an exported program holds quantize/dequantize ops (an int8 export)."""
    with open(model_file, "rb") as f:
        data = f.read()
    return any(marker in data for marker in _QUANT_OP_MARKERS)


def _check(settings: InferenceSettings):
    if settings.precision not in PRECISIONS:
        raise ConfigError(f"--precision {settings.precision!r}: Paddle Inference runs exported models in "
                          f"{' or '.join(PRECISIONS)} here.")
    if settings.threads < 1:
        raise ConfigError(f"--threads must be 1 or more, got {settings.threads}.")
    if settings.device.startswith("gpu"):
        import paddle
        if not paddle.is_compiled_with_cuda():
            raise ConfigError(f"--device {settings.device}: this Paddle is built without CUDA; use --device cpu "
                              f"(or install paddlepaddle-gpu).")
    elif settings.device != "cpu":
        raise ConfigError(f"--device {settings.device!r}: give cpu, gpu or gpu:N.")
    if settings.use_tensorrt and not settings.device.startswith("gpu"):
        raise ConfigError("--use_tensorrt runs on a GPU: add --device gpu.")


def make_config(model_file: str, params_file: str, settings: InferenceSettings):
    """The `paddle.inference.Config` for the settings (CPU: oneDNN and its int8 switch, threads; GPU: memory pool,
    TensorRT with its precision)."""
    import paddle.inference as pi
    config = pi.Config(model_file, params_file)
    config.disable_glog_info()
    if settings.device.startswith("gpu"):
        device_id = int(settings.device.split(":")[1]) if ":" in settings.device else 0
        config.enable_use_gpu(settings.gpu_memory_mb, device_id)
        if settings.use_tensorrt:
            precision = pi.PrecisionType.Int8 if settings.precision == "int8" else pi.PrecisionType.Float32
            # a QAT/PTQ model carries its scales: no TensorRT calibration (use_calib_mode False)
            config.enable_tensorrt_engine(workspace_size=settings.trt_workspace_mb << 20, max_batch_size=1,
                                          min_subgraph_size=settings.trt_min_subgraph_size,
                                          precision_mode=precision, use_static=False, use_calib_mode=False)
    else:
        config.disable_gpu()
        config.set_cpu_math_library_num_threads(settings.threads)
        if settings.onednn:
            config.enable_mkldnn()
            if settings.precision == "int8":
                config.enable_mkldnn_int8(set(INT8_OP_TYPES))
        else:
            config.disable_mkldnn()
    return config


class Predictor:
    """A Paddle Inference predictor of an exported model; `run` takes and returns numpy arrays."""

    def __init__(self, path: str, settings: Optional[InferenceSettings] = None):
        self.settings = settings or InferenceSettings()
        _check(self.settings)
        self.model_file, self.params_file = pick_model(path, self.settings.precision)
        self.quantized = is_quantized_program(self.model_file)
        if self.settings.precision == "int8" and not self.quantized:
            raise ConfigError(f"--precision int8: {self.model_file} is an fp32 export (it holds no quantize/"
                              f"dequantize ops, so no int8 scales). Export a QAT checkpoint with "
                              f"`tools/export.py --quant_config Q.yml`, or quantise this model with tools/ptq.py; "
                              f"or run it with --precision fp32.")
        import paddle.inference as pi
        self.config = make_config(self.model_file, self.params_file, self.settings)
        onednn_int8 = self.settings.precision == "int8" and not self.settings.device.startswith("gpu")
        with tempfile.TemporaryDirectory() as optimized:
            if onednn_int8:  # the optimised program says which ops oneDNN runs in int8
                self.config.enable_save_optim_model(True)
                self.config.set_optim_cache_dir(optimized)
            self.predictor = pi.create_predictor(self.config)
            #: {op type: count} of the ops oneDNN runs in int8 (CPU int8 only, else None)
            self.int8_ops = _int8_ops(os.path.join(optimized, "_optimized.pdmodel")) if onednn_int8 else None
        self.input_names = self.predictor.get_input_names()
        self.output_names = self.predictor.get_output_names()
        #: the first inputs `run` was given (for a latency measurement on real data)
        self.first_inputs: Optional[List[np.ndarray]] = None

    def describe(self) -> str:
        kind = "int8 (quantize/dequantize ops)" if self.quantized else "fp32"
        text = f"{self.model_file} ({kind} export) on {self.settings.describe()}"
        if self.int8_ops is not None:
            ops = ", ".join(f"{n} {t}" for t, n in sorted(self.int8_ops.items())) or "none"
            text += f"; ops in int8: {ops}"
        return text

    def run(self, inputs: Sequence[np.ndarray]) -> List[np.ndarray]:
        if len(inputs) != len(self.input_names):
            raise ConfigError(f"{self.model_file} takes {len(self.input_names)} input(s) ({', '.join(self.input_names)}), "
                              f"got {len(inputs)}.")
        if self.first_inputs is None:
            self.first_inputs = [np.array(x, copy=True) for x in inputs]
        for name, value in zip(self.input_names, inputs):
            self.predictor.get_input_handle(name).copy_from_cpu(np.ascontiguousarray(value))
        self.predictor.run()
        return [self.predictor.get_output_handle(name).copy_to_cpu() for name in self.output_names]

    def latency(self, inputs: Sequence[np.ndarray], warmup: int = 10, repeats: int = 50) -> Latency:
        """Wall time of `run(inputs)`: `warmup` calls, then the times of `repeats` calls."""
        for _ in range(warmup):
            self.run(inputs)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            self.run(inputs)
            times.append((time.perf_counter() - start) * 1000.0)
        return Latency(tuple(times), warmup)


def _int8_ops(optimized_program):
    """{op type: count} of the ops marked int8 in an optimised old-IR program (None when it cannot be read)."""
    from collections import Counter
    try:
        from paddle.base import core
        with open(optimized_program, "rb") as f:
            program = core.ProgramDesc(f.read())  # kept alive while its block is read
    except Exception:  # not written (e.g. a PIR program) or unreadable: nothing to report
        return None
    block = program.block(0)
    ops = [block.op(i) for i in range(block.op_size())]
    return dict(Counter(op.type() for op in ops
                        if op.has_attr("mkldnn_data_type") and op.attr("mkldnn_data_type") == "int8"))


def batch_of_one(inputs: Sequence[np.ndarray]) -> List[np.ndarray]:
    """The first sample of each input array (a batch of one), for per-image latency."""
    return [np.ascontiguousarray(x[:1]) for x in inputs]
