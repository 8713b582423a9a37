"""PaddleClas's `Optimizer.lr`: the rate PaddleClas's own training gives at every iteration.

    Optimizer:
      lr: {name: Cosine, learning_rate: 0.04, warmup_epoch: 5, warmup_start_lr: 0.0, eta_min: 0.0,
           by_epoch: False, last_epoch: -1}

PaddleClas (ppcls/optimizer/learning_rate.py) builds a paddle.optimizer.lr scheduler from `lr`, Global.epochs and
the train loader's batches per epoch (step_each_epoch); its train loop (ppcls/engine/train/train.py) calls step()
after every iteration, or after every epoch with `by_epoch: True`. What it builds, reproduced here:

| lr name | schedule (E = Global.epochs, n = step_each_epoch, w = warmup_epoch) |
| --- | --- |
| Cosine | CosineAnnealingDecay(learning_rate, T_max (E - w) * n, eta_min); constant when T_max is 0 |
| Linear | PolynomialDecay(learning_rate, (E - w) * n, end_lr, power, cycle); constant when that is 0 |
| Step | StepDecay(learning_rate, int(step_size * n), gamma) |
| Piecewise | PiecewiseDecay(decay_epochs * n, values); with `learning_rate`: x0.1 every 30 epochs (PaddleClas's rule) |
| MultiStepDecay | MultiStepDecay(learning_rate, milestones * n, gamma 0.1) |
| ConstLR | learning_rate |
| Constant, or no name | learning_rate, never a warm-up (PaddleClas's Constant takes no warmup_epoch) |

- w not smaller than E becomes E (PaddleClas's warning): the warm-up then covers the whole run, the rate reaches
  learning_rate only at its end (`-o Global.epochs=3` on a config with `warmup_epoch: 5`).
- Warm-up: paddle's LinearWarmup from warmup_start_lr to learning_rate over round(w * n) iterations (Python's
  round: 2.5 -> 2), after which the decay starts at its step 0.
- by_epoch: lengths in epochs (T_max E - w, step_size, decay_epochs and milestones as written, a warm-up of w
  steps), stepped once per epoch. Linear's warm-up stays round(w * n) steps even then, as in PaddleClas.
- last_epoch k (default -1): every scheduler starts at its step k + 1, as paddle's LRScheduler does.

The trainer steps its schedule once per iteration: it gets paddle's LambdaDecay(1.0, rate) where rate(i) is the
rate of this scheduler after the steps PaddleClas's loop has made before iteration i (a copy of the scheduler,
stepped forward; rebuilt when a resume asks for an earlier iteration). `--iters N` (this package's flag;
PaddleClas has none) is a run of N / n epochs: the same rules with E = N / n (by_epoch: E rounded up).
"""
import math
from fractions import Fraction

from paddle.optimizer import lr as paddle_lr

from slim.distill.errors import ConfigError

SUPPORTED = ("Cosine", "Linear", "Step", "Piecewise", "MultiStepDecay", "ConstLR", "Constant")
# keys PaddleClas's LRBase and the classes above read; anything else is listed as not used
_COMMON = {"name", "learning_rate", "warmup_epoch", "warmup_start_lr", "last_epoch", "by_epoch", "epochs",
           "step_each_epoch", "verbose"}
_OWN = {"Cosine": {"eta_min"}, "Linear": {"end_lr", "power", "cycle"}, "Step": {"step_size", "gamma"},
        "Piecewise": {"decay_epochs", "values"}, "MultiStepDecay": {"milestones", "gamma"}, "ConstLR": set(),
        "Constant": set(), None: set()}


def _number(value, what):
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"Optimizer.lr.{what} must be a number, got {value!r}") from None


def _as_given(value, what):
    """A length as PaddleClas computes it: an int stays an int (Fraction and integral float -> int)."""
    if isinstance(value, bool):
        raise ConfigError(f"Optimizer.lr.{what} must be a number, got {value!r}")
    if isinstance(value, (int, Fraction)):
        return int(value) if value == int(value) else value
    return _number(value, what)


def _show(value):
    return f"{float(value):g}" if isinstance(value, Fraction) else str(value)


class PaddleClasSchedule:
    """The scheduler PaddleClas builds for `lr_cfg` (a dict of Optimizer.lr) over `epochs` epochs of
    `step_each_epoch` iterations, and the rate it gives at each iteration of the run."""

    def __init__(self, lr_cfg, epochs, step_each_epoch, log=print):
        if isinstance(lr_cfg, (int, float)) and not isinstance(lr_cfg, bool):
            lr_cfg = {"learning_rate": lr_cfg}  # PaddleClas needs a mapping; a bare number is a constant here
        if not isinstance(lr_cfg, dict):
            raise ConfigError(f"Optimizer.lr must be a mapping such as {{name: Cosine, learning_rate: 0.1}}, got "
                              f"{lr_cfg!r}")
        self.cfg, self.notes = dict(lr_cfg), []
        self.name = self.cfg.get("name")
        if self.name is not None and self.name not in SUPPORTED:
            raise ConfigError(f"Optimizer.lr name {self.name!r} is not supported; supported: {', '.join(SUPPORTED)}.")
        self.step_each_epoch = int(step_each_epoch)
        if self.step_each_epoch < 1:
            raise ConfigError("The training set gives no batch per epoch: lower the batch size or add data.")
        self.by_epoch = bool(self.cfg.get("by_epoch", False)) and self.name not in (None, "Constant")
        if self.by_epoch and isinstance(epochs, Fraction):
            epochs = math.ceil(epochs)  # --iters with by_epoch: whole epochs (the run stops at its iteration)
        self.epochs = _as_given(epochs, "epochs (Global.epochs)")
        self.last_epoch = int(self.cfg.get("last_epoch", -1))
        unused = sorted(k for k in self.cfg if k not in _COMMON | _OWN.get(self.name, set()))
        if unused:
            log(f"Optimizer.lr: not used by PaddleClas's {self.name or 'constant rate'} (nor here): "
                f"{', '.join(unused)}")
        self.build(self.notes)  # errors (and PaddleClas's warnings) now, not at the first step
        for note in self.notes:
            log(note)

    # ----- the scheduler, built as ppcls/optimizer/learning_rate.py builds it ------------------------------
    def _warmup(self, learning_rate, note):
        """LRBase: (warmup_epoch, warmup steps); warmup_epoch not below Global.epochs becomes Global.epochs."""
        w = _as_given(self.cfg.get("warmup_epoch", 0) or 0, "warmup_epoch")
        if w >= self.epochs:
            note(f"Optimizer.lr.warmup_epoch {_show(w)} is not below Global.epochs {_show(self.epochs)}: set to "
                 f"{_show(self.epochs)}, as PaddleClas does (the warm-up covers the whole run and the rate "
                 f"reaches learning_rate {learning_rate:g} only at its end)")
            w = self.epochs
        steps = w if self.by_epoch else round(w * self.step_each_epoch)
        return w, steps

    @staticmethod
    def _steps(value, what, note):
        """A length paddle wants as an int. PaddleClas passes a float through (and paddle then stops with a
        TypeError); here a whole float is that int, a fraction is rounded (with a log line)."""
        if isinstance(value, (int, Fraction)) and value == int(value):
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        note(f"Optimizer.lr: {what} is {float(value):g} steps, not a whole number (PaddleClas stops "
             f"here: paddle wants an int); rounded to {int(round(value))}")
        return int(round(value))

    def build(self, notes=None):
        """A fresh paddle scheduler at its first step (what PaddleClas's optimizer starts with), or a float.
        `notes`: a list that gets what PaddleClas would warn about."""
        note = notes.append if notes is not None else (lambda _: None)
        cfg, n, E, last = self.cfg, self.step_each_epoch, self.epochs, self.last_epoch
        if self.name is None:
            if "learning_rate" not in cfg:
                raise ConfigError("Optimizer.lr needs learning_rate (e.g. {name: Cosine, learning_rate: 0.1})")
            return _number(cfg["learning_rate"], "learning_rate")
        if self.name == "Constant":
            lr = _number(cfg.get("learning_rate"), "learning_rate")
            if cfg.get("warmup_epoch"):
                note("Optimizer.lr: PaddleClas's Constant has no warm-up (its warmup_epoch is not used; "
                     "ConstLR warms up)")
            return _Constant(lr, last)
        if self.name == "Piecewise":
            learning_rate, inner = self._piecewise(note)
        else:
            if "learning_rate" not in cfg:
                raise ConfigError(f"Optimizer.lr {self.name} needs learning_rate")
            learning_rate = _number(cfg["learning_rate"], "learning_rate")
            inner = None
        w, warm = self._warmup(learning_rate, note)
        if self.name == "Cosine":
            t_max = self._steps((E - w) if self.by_epoch else (E - w) * n, "T_max", note)
            inner = (paddle_lr.CosineAnnealingDecay(learning_rate, t_max, _number(cfg.get("eta_min", 0.0), "eta_min"),
                                                    last_epoch=last) if t_max > 0 else _Constant(learning_rate))
        elif self.name == "Linear":
            decay = self._steps((E - w) if self.by_epoch else (E - w) * n, "decay_steps", note)
            warm = round(w * n)  # PaddleClas's Linear counts its warm-up in iterations, by_epoch or not
            inner = (paddle_lr.PolynomialDecay(learning_rate, decay, _number(cfg.get("end_lr", 0.0), "end_lr"),
                                               _number(cfg.get("power", 1.0), "power"), bool(cfg.get("cycle", False)),
                                               last_epoch=last) if decay > 0 else _Constant(learning_rate))
        elif self.name == "Step":
            if "step_size" not in cfg or "gamma" not in cfg:
                raise ConfigError("Optimizer.lr Step needs step_size (epochs) and gamma, e.g. {name: Step, "
                                  "learning_rate: 0.1, step_size: 30, gamma: 0.1}")
            size = (self._steps(_as_given(cfg["step_size"], "step_size"), "step_size", note) if self.by_epoch
                    else int(_number(cfg["step_size"], "step_size") * n))
            if size < 1:
                raise ConfigError(f"Optimizer.lr Step: step_size {cfg['step_size']} gives {size} steps; it must give "
                                  f"a whole number of at least 1")
            inner = paddle_lr.StepDecay(learning_rate, size, _number(cfg["gamma"], "gamma"), last_epoch=last)
        elif self.name == "MultiStepDecay":
            milestones = cfg.get("milestones")
            if not milestones:
                raise ConfigError("Optimizer.lr MultiStepDecay needs milestones (epochs), e.g. [30, 60, 90]")
            milestones = [m if self.by_epoch else m * n for m in milestones]
            inner = paddle_lr.MultiStepDecay(learning_rate, milestones, _number(cfg.get("gamma", 0.1), "gamma"),
                                             last_epoch=last)
        elif self.name == "ConstLR":
            inner = _Constant(learning_rate, last)
        if warm > 0:
            start = _number(cfg.get("warmup_start_lr", 0.0), "warmup_start_lr")
            if not start < learning_rate:
                raise ConfigError(f"Optimizer.lr.warmup_start_lr {start:g} must be below learning_rate "
                                  f"{learning_rate:g} (paddle's LinearWarmup)")
            return paddle_lr.LinearWarmup(inner, self._steps(warm, "the warm-up", note), start, learning_rate,
                                          last_epoch=last)
        return inner

    def _piecewise(self, note):
        cfg, E = self.cfg, self.epochs
        decay_epochs, values = cfg.get("decay_epochs"), cfg.get("values")
        if cfg.get("learning_rate"):  # PaddleClas: learning_rate replaces decay_epochs and values
            base = _number(cfg["learning_rate"], "learning_rate")
            decay_epochs = list(range(0, math.ceil(E), 30))
            values = [base * (0.1 ** i) for i in range(len(decay_epochs))]
            if len(decay_epochs) == 1:
                decay_epochs, values = [E], [values[0], values[0]]
            else:
                decay_epochs = decay_epochs[1:]
            note(f"Optimizer.lr Piecewise with learning_rate: decay_epochs {decay_epochs} and values "
                 f"{[float(f'{v:.6g}') for v in values]} (PaddleClas's rule: x0.1 every 30 epochs; drop "
                 f"learning_rate to use decay_epochs and values)")
        if not decay_epochs or not values or len(values) != len(decay_epochs) + 1:
            raise ConfigError("Optimizer.lr Piecewise needs decay_epochs and values (one more value than epochs), "
                              "e.g. {name: Piecewise, decay_epochs: [30, 60], values: [0.1, 0.01, 0.001]}")
        values = [_number(v, "values") for v in values]
        boundaries = list(decay_epochs) if self.by_epoch else [e * self.step_each_epoch for e in decay_epochs]
        return values[0], paddle_lr.PiecewiseDecay(boundaries, values, last_epoch=self.last_epoch)

    # ----- the rate at each iteration ---------------------------------------------------------------------
    def steps_before(self, iteration):
        """How many times PaddleClas's loop has stepped the scheduler before `iteration` (0-based)."""
        return iteration // self.step_each_epoch if self.by_epoch else iteration

    def rate_fn(self):
        return RateAtIteration(self)

    def rates(self, count):
        rate = self.rate_fn()
        return [rate(i) for i in range(count)]

    def describe(self):
        s = self.build()
        kind = type(s).__name__ if not isinstance(s, float) else "constant"
        if isinstance(s, paddle_lr.LinearWarmup):
            inner = type(s.learning_rate).__name__.lstrip("_")
            kind = f"LinearWarmup over {s.warmup_steps} step(s), then {inner}"
        return (f"Optimizer.lr {self.name or 'learning_rate'} as PaddleClas computes it: {kind.lstrip('_')}, stepped "
                f"{'once per epoch' if self.by_epoch else 'every iteration'} ({self.step_each_epoch} iterations per "
                f"epoch, {_show(self.epochs)} epochs)")


class RateAtIteration:
    """rate(i): the rate of a PaddleClasSchedule at iteration i (the lr_lambda of a LambdaDecay of base 1.0)."""

    def __init__(self, schedule):
        self.schedule = schedule
        self._scheduler, self._steps = None, 0

    def __call__(self, iteration):
        wanted = self.schedule.steps_before(int(iteration))
        if self._scheduler is None or wanted < self._steps:
            self._scheduler, self._steps = self.schedule.build(), 0
        if isinstance(self._scheduler, float):
            return self._scheduler
        while self._steps < wanted:
            self._scheduler.step()
            self._steps += 1
        return float(self._scheduler.last_lr)


class _Constant(paddle_lr.LRScheduler):
    """PaddleClas's Constant: learning_rate at every step."""

    def __init__(self, learning_rate, last_epoch=-1):
        self.constant = float(learning_rate)
        super().__init__(learning_rate, last_epoch)

    def get_lr(self):
        return self.constant


def trainer_schedule(schedule):
    """The trainer's lr_scheduler section (slim/engine/optim.py) that steps `schedule` as PaddleClas does."""
    return {"type": "LambdaDecay", "learning_rate": 1.0, "lr_lambda": schedule.rate_fn()}


__all__ = ["PaddleClasSchedule", "RateAtIteration", "SUPPORTED", "trainer_schedule"]
