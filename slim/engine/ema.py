"""An exponential moving average of the student's weights, kept beside training (PaddleDetection's ModelEMA).

    ema: {decay: 0.9998, type: threshold}        # any task's config; ppdet configs: use_ema: true, ema_decay: ...

The trainer updates the average after every optimizer step, evaluates it, and saves it as the checkpoint's
`model.pdparams` (what eval, infer, export and a teacher load); the weights being trained go beside it in
`ema.pdparams`, so `--resume_model` continues both exactly.

With w_t the student's state after step t (t = 1, 2, ...; parameters and BatchNorm statistics), the
accumulator a_0 = 0 and

    d_t = min(decay, t / (9 + t))         type threshold (ppdet's default: a short average early in training)
        = decay                           type normal
        = decay * (1 - exp(-t / 2000))    type exponential
    a_t = d_t * a_{t-1} + (1 - d_t) * w_t

the average after T steps is a_T / (1 - d_T^T) (the zero start corrected; not for exponential), as
ppdet's ModelEMA.apply(). Entries whose name contains a `black_list` string are not averaged.
"""
import math

import paddle

from slim.distill.errors import ConfigError

DECAY_TYPES = ("threshold", "normal", "exponential")


def ema_settings(value):
    """The `ema:` config value -> {decay, type, black_list}, or None when EMA is off."""
    if value in (None, False):
        return None
    if value is True:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(f"ema: expected a mapping such as {{decay: 0.9998, type: threshold}} (or true), "
                          f"got {value!r}")
    unknown = set(value) - {"decay", "type", "black_list"}
    if unknown:
        raise ConfigError(f"ema: unknown key(s) {sorted(unknown)}; use decay, type, black_list.")
    decay = float(value.get("decay", 0.9998))
    if not 0.0 < decay < 1.0:
        raise ConfigError(f"ema.decay must be in (0, 1), got {decay}")
    kind = str(value.get("type", "threshold"))
    if kind not in DECAY_TYPES:
        raise ConfigError(f"ema.type {kind!r} is not one of {', '.join(DECAY_TYPES)}.")
    return {"decay": decay, "type": kind, "black_list": list(value.get("black_list") or [])}


class ModelEMA:
    """The moving average of one model's state (module doc for the formula)."""

    def __init__(self, model, decay=0.9998, type="threshold", black_list=()):
        self.decay, self.type = float(decay), type
        own = model.state_dict()
        self.skipped = {k for k in own if any(s in k for s in black_list) or not paddle.is_floating_point(own[k])}
        self.step, self.last_decay = 0, 0.0
        self.accumulator = {k: paddle.zeros_like(v) for k, v in own.items() if k not in self.skipped}

    def decay_at(self, step):
        """d_t for the t-th update (t = step + 1)."""
        if self.type == "threshold":
            return min(self.decay, (1 + step) / (10 + step))
        if self.type == "exponential":
            return self.decay * (1 - math.exp(-(step + 1) / 2000))
        return self.decay

    @paddle.no_grad()
    def update(self, model):
        d = self.decay_at(self.step)
        state = model.state_dict()
        for k, acc in self.accumulator.items():
            self.accumulator[k] = d * acc + (1 - d) * state[k].detach()
        self.step, self.last_decay = self.step + 1, d

    def averaged_state(self, model):
        """The averaged weights as a state dict of `model` (its own values where nothing is averaged)."""
        state = model.state_dict()
        if self.step == 0:
            return {k: v.clone() for k, v in state.items()}
        correction = 1.0 if self.type == "exponential" else 1.0 - self.last_decay ** self.step
        return {k: (self.accumulator[k] / correction if k in self.accumulator else v.clone())
                for k, v in state.items()}

    def state_dict(self):
        return {"accumulator": dict(self.accumulator), "step": self.step, "last_decay": self.last_decay}

    def set_state_dict(self, state, what="the checkpoint"):
        missing = sorted(set(self.accumulator) - set(state["accumulator"]))
        if missing:
            raise ConfigError(f"The EMA state of {what} lacks {', '.join(missing[:5])}: it was saved from "
                              f"another model or with another ema.black_list.")
        self.accumulator = {k: paddle.to_tensor(state["accumulator"][k]) for k in self.accumulator}
        self.step, self.last_decay = int(state["step"]), float(state["last_decay"])
