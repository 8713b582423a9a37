"""Mixed precision for the student and the teacher, and the one optimisation step the trainer runs.

    --precision fp32|fp16|bf16   --amp_level O1|O2   (--amp: PaddleDetection's spelling of fp16 O1)
    pipeline stage (or `defaults:`): amp: {precision: fp16, level: O1}

O1: the student, the teacher and the connectors run under `paddle.amp.auto_cast`: ops on Paddle's white list
(convolutions, matmuls) compute in float16/bfloat16, the others in float32; weights stay float32.
O2: the student and the teacher are cast by `paddle.amp.decorate` (normalisation layers stay float32) and
nearly every op computes in the low precision; the optimizer keeps float32 master weights, and checkpoints
hold float32 weights (model.pdparams loads into the plain model). The teacher, which has no optimizer, is
cast on its own.
Losses are always computed in float32: the task's loss gets the student's outputs cast to float32, the
distillation losses get the compared tensors cast to float32, both with autocast off
(slim/distill/precision.py).

fp16 uses a dynamic loss scale (`paddle.amp.GradScaler`, starting at 1024): the loss is scaled before
backward, and `GradScaler.step` unscales the gradients before the optimizer's step, so a `grad_clip_cfg`
clips the true gradients. A step whose gradients overflow is skipped (the weights are not updated) and the
scale halved; that is not an error. The run stops with NonFiniteLossError only after MAX_SKIPPED_STEPS
steps in a row were skipped. bf16 has float32's range and needs no loss scale.

Where autocast does nothing the run trains in fp32 and its log says so: on a CPU Paddle's auto_cast leaves
every tensor in float32 (it acts on GPU, XPU and custom devices only); on a GPU without float16 (bfloat16)
support, fp16 (bf16) falls back to fp32 too. The precision a run uses is always logged.
"""
import contextlib
from collections import OrderedDict

import paddle

from slim.distill.errors import ConfigError

PRECISIONS = ("fp32", "fp16", "bf16")
LEVELS = ("O1", "O2")
DTYPES = {"fp16": "float16", "bf16": "bfloat16"}
INIT_LOSS_SCALING = 1024.0
# fp16: this many steps in a row skipped by the loss scaler (non-finite loss or gradients) stop the run.
# The scale halves at each skip: after 20 it is 1024 / 2**20 ~ 0.001, so what still overflows is a
# diverged run, not a too large scale.
MAX_SKIPPED_STEPS = 20


class Precision:
    """The precision a run asked for (`requested`) and the one it uses (`name`, `level`), with why they
    differ (`note`). `enabled`: autocast is on (fp16 or bf16 in use)."""

    def __init__(self, precision="fp32", level="O1", device=None):
        precision = str(precision or "fp32").lower()
        level = str(level or "O1").upper()
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
        if level not in LEVELS:
            raise ConfigError(f"amp level must be O1 or O2, got {level!r}.")
        self.requested, self.requested_level = precision, level
        self.name, self.level, self.note = precision, level, ""
        if precision != "fp32":
            why = _unsupported(precision, device)
            if why:
                self.name, self.note = "fp32", f"{precision} {level} was asked for, but {why}: training in fp32"
        if self.name == "fp32":
            self.level = "O0"

    @property
    def enabled(self):
        return self.name != "fp32"

    @property
    def dtype(self):
        return DTYPES.get(self.name, "float32")

    @property
    def uses_scaler(self):
        return self.name == "fp16"

    def describe(self):
        if not self.enabled:
            return "precision: fp32" + (f" ({self.note})" if self.note else "")
        what = {"O1": "white-listed ops (conv, matmul) in low precision, weights float32",
                "O2": "weights and nearly every op in low precision, float32 master weights"}[self.level]
        scale = (f", dynamic loss scale from {INIT_LOSS_SCALING:g} (a run stops after {MAX_SKIPPED_STEPS} "
                 f"skipped steps in a row)") if self.uses_scaler else ""
        return (f"precision: {self.name} {self.level} ({self.dtype} autocast for student, teacher and connectors: "
                f"{what}; losses in float32{scale})")

    def autocast(self):
        """The context the forward passes run in (nothing in fp32)."""
        if not self.enabled:
            return contextlib.nullcontext()
        return paddle.amp.auto_cast(enable=True, level=self.level, dtype=self.dtype)


def _unsupported(precision, device=None):
    """Why `precision` cannot run on this device ('' when it can)."""
    device = str(device or paddle.get_device())
    if device.startswith("cpu"):
        return (f"this run is on {device}, where Paddle's auto_cast leaves tensors in float32 (it acts on GPU, "
                f"XPU and custom devices only)")
    if device.startswith("gpu"):
        if precision == "fp16" and not paddle.amp.is_float16_supported():
            return f"this GPU ({paddle.device.cuda.get_device_name()}) does not support float16"
        if precision == "bf16" and not paddle.amp.is_bfloat16_supported():
            return f"this GPU ({paddle.device.cuda.get_device_name()}) does not support bfloat16"
    return ""


def precision_settings(value, where):
    """A pipeline's `amp:` mapping ({precision: fp16, level: O1}) -> (precision, level), checked."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"precision", "level"}:
        raise ConfigError(f"{where}: `amp` must be a mapping with `precision` (fp32, fp16 or bf16) and optionally "
                          f"`level` (O1 or O2), e.g. amp: {{precision: fp16, level: O1}}; got {value!r}")
    precision, level = str(value.get("precision", "fp16")).lower(), str(value.get("level", "O1")).upper()
    if precision not in PRECISIONS or level not in LEVELS:
        raise ConfigError(f"{where}: amp precision must be one of {', '.join(PRECISIONS)} and level O1 or O2, got "
                          f"{value!r}")
    return precision, level


def build_scaler(precision):
    """The loss scaler of a fp16 run (None otherwise)."""
    if not precision.uses_scaler:
        return None
    return paddle.amp.GradScaler(init_loss_scaling=INIT_LOSS_SCALING)


def decorate_for_o2(precision, *models):
    """O2: cast the models' weights to the low precision in place (normalisation layers stay float32;
    their state_dict() still gives float32 weights). Nothing for O1 or fp32."""
    if not precision.enabled or precision.level != "O2":
        return
    for model in models:
        if model is not None:
            paddle.amp.decorate(models=model, level="O2", dtype=precision.dtype, save_dtype="float32")


class StepLosses:
    """The loss terms of one step, still on the device: `values` is one float32 vector [loss, *terms]
    (read it with `read()`, a single transfer); `skipped`: the loss scaler skipped the step."""

    __slots__ = ("names", "values", "skipped")

    def __init__(self, names, values, skipped=False):
        self.names, self.values, self.skipped = names, values, skipped

    def read(self):
        return as_dict(self.names, self.values.numpy())


def as_dict(names, row):
    """OrderedDict name -> float of one row of loss values (as float(term) of each term gives)."""
    out = OrderedDict()
    for name, value in zip(names, row):
        out[name] = float(value)
    return out


def train_step(forward, optimizer, precision=None, scaler=None):
    """One optimisation step, the trainer's (bench/gpu_check.py times this same function).

    `forward()` runs the student (and the distiller) and returns an OrderedDict of named 0-D float32 loss
    terms; it runs under the precision's autocast (compute the losses in float32 inside it, see
    slim/distill/precision.py). Backward, the loss scaler (fp16) and the optimizer's step follow; no value
    is read to the host (except by Paddle's own scaler, which checks its overflow flag). Returns StepLosses.
    """
    with (precision.autocast() if precision is not None else contextlib.nullcontext()):
        terms = forward()
    loss = paddle.add_n(list(terms.values()))
    skipped = False
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)  # unscales the gradients, then the optimizer clips them and steps (or skips)
        scaler.update()
        skipped = bool(getattr(scaler, "_cache_found_inf", False))
    else:
        loss.backward()
        optimizer.step()
    optimizer.clear_grad()
    with paddle.no_grad():
        parts = [loss] + list(terms.values())
        parts = [p if p.dtype == paddle.float32 else p.astype("float32") for p in parts]
        values = paddle.stack([p.reshape([]) for p in parts])
    return StepLosses(["loss"] + list(terms), values, skipped)
