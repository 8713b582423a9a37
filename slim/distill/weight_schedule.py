"""Loss weights that change over training: a factor on a term's configured weight, by iteration or epoch.

    distill_loss:
      types:
        - type: KLLoss
          weight_schedule: {type: linear, from: 0.0, to: 1.0, end: 500}     # ramp the KD term in
      coef: [3]
    distill:
      - {student: backbone.bb_2_1, teacher: backbone.bb_2_1, loss: L2Loss, weight: 0.5,
         weight_schedule: {type: constant, stop: 20, by: epoch}}           # MMRazor's StopDistillHook(stop_epoch=20)

The weight of a term at a step is `weight x factor(position)`, position = the iterations done before the step
(`by: iter`, the default) or the epoch it is in (`by: epoch`, whole epochs). Types:

- constant: 1.
- linear: `from` (1) at `begin` (0), `to` (0) at `end` (default: the run's end), a straight line between, held
  outside.
- cosine: `to + (from - to) (1 + cos(pi t)) / 2`, t = (position - begin) / (end - begin), same keys as linear.
- step: `gamma^k` (gamma 0.1) after k of the `milestones`, or `values[k]` (one value more than milestones).

Every type also takes `warmup: N` (the factor times position / N before N: 0 at the first step) and `stop: N`
(factor 0 from position N on: distillation stops, as MMRazor's StopDistillHook). Once every distillation term of a
step has weight 0 the distiller does not run the teacher. The factor depends on the position alone, so a resumed
run continues the schedule where it stopped.
"""
import difflib
import math

from .errors import ConfigError

TYPES = ("constant", "linear", "cosine", "step")
UNITS = ("iter", "epoch")
_COMMON = {"type", "by", "warmup", "stop"}
_KEYS = {"constant": set(), "linear": {"from", "to", "begin", "end"}, "cosine": {"from", "to", "begin", "end"},
         "step": {"milestones", "gamma", "values"}}
_EXAMPLE = "{type: linear, from: 0.0, to: 1.0, end: 1000}"


def _number(value, key, where, minimum=0.0):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < minimum:
        raise ConfigError(f"{where}: weight_schedule `{key}` must be a number >= {minimum:g}, got {value!r} "
                          f"(e.g. weight_schedule: {_EXAMPLE}).")
    return float(value)


class WeightSchedule:
    """factor(iteration, epoch, total_iters, total_epochs) -> the multiplier of a term's weight at that step."""

    def __init__(self, cfg: dict, where: str = "weight_schedule"):
        if isinstance(cfg, str):
            cfg = {"type": cfg}
        if not isinstance(cfg, dict):
            raise ConfigError(f"{where}: weight_schedule must be a mapping like {_EXAMPLE}, got {cfg!r}.")
        cfg = dict(cfg)
        kind = str(cfg.get("type", "constant")).lower()
        if kind not in TYPES:
            close = difflib.get_close_matches(kind, TYPES, n=1)
            raise ConfigError(f"{where}: weight_schedule type {kind!r} is not one of {', '.join(TYPES)}"
                              + (f" (did you mean {close[0]!r}?)" if close else "") + ".")
        allowed = _COMMON | _KEYS[kind]
        unknown = [k for k in cfg if k not in allowed]
        if unknown:
            hints = []
            for k in unknown:
                close = difflib.get_close_matches(str(k), sorted(allowed), n=1)
                hints.append(repr(k) + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ConfigError(f"{where}: weight_schedule of type {kind} has no key(s) {', '.join(hints)}; it takes "
                              f"{', '.join(sorted(allowed))}.")
        self.cfg, self.type, self.where = cfg, kind, where
        self.by = str(cfg.get("by", "iter")).lower()
        if self.by in ("iters", "iteration", "iterations"):
            self.by = "iter"
        if self.by in ("epochs",):
            self.by = "epoch"
        if self.by not in UNITS:
            raise ConfigError(f"{where}: weight_schedule `by` must be iter or epoch, got {cfg.get('by')!r}.")
        self.warmup = _number(cfg.get("warmup", 0), "warmup", where)
        self.stop = None if cfg.get("stop") is None else _number(cfg["stop"], "stop", where)
        self.start_factor = _number(cfg.get("from", 1.0), "from", where)
        self.end_factor = _number(cfg.get("to", 0.0), "to", where)
        self.begin = _number(cfg.get("begin", 0), "begin", where)
        self.end = None if cfg.get("end") is None else _number(cfg["end"], "end", where)
        if self.end is not None and self.end <= self.begin:
            raise ConfigError(f"{where}: weight_schedule `end` ({cfg['end']}) must be after `begin` "
                              f"({cfg.get('begin', 0)}).")
        self.milestones, self.values, self.gamma = [], None, 0.1
        if kind == "step":
            self._parse_steps(cfg, where)

    def _parse_steps(self, cfg, where):
        milestones = cfg.get("milestones")
        if not isinstance(milestones, (list, tuple)) or not milestones:
            raise ConfigError(f"{where}: weight_schedule type step needs `milestones: [N1, N2, ...]` (positions where "
                              f"the factor changes), got {milestones!r}.")
        self.milestones = [_number(m, "milestones", where) for m in milestones]
        if any(b <= a for a, b in zip(self.milestones, self.milestones[1:])):
            raise ConfigError(f"{where}: weight_schedule milestones must increase, got {list(milestones)}.")
        if cfg.get("values") is not None:
            values = cfg["values"]
            if not isinstance(values, (list, tuple)) or len(values) != len(self.milestones) + 1:
                raise ConfigError(f"{where}: weight_schedule `values` needs one factor more than `milestones` (the "
                                  f"factor before the first milestone, then after each), got {values!r} for "
                                  f"{len(self.milestones)} milestone(s).")
            self.values = [_number(v, "values", where) for v in values]
            if "gamma" in cfg:
                raise ConfigError(f"{where}: weight_schedule type step takes `gamma` or `values`, not both.")
        else:
            self.gamma = _number(cfg.get("gamma", 0.1), "gamma", where)

    def position(self, iteration: int, epoch: int) -> float:
        return float(epoch if self.by == "epoch" else iteration)

    def factor(self, iteration: int, epoch: int, total_iters: int = None, total_epochs: int = None) -> float:
        """The multiplier at the step after `iteration` iterations (in epoch `epoch`, 0-based)."""
        p = self.position(iteration, epoch)
        if self.stop is not None and p >= self.stop:
            return 0.0
        if self.type == "constant":
            value = 1.0
        elif self.type == "step":
            k = sum(1 for m in self.milestones if p >= m)
            value = self.values[k] if self.values is not None else self.gamma ** k
        else:
            end = self.end if self.end is not None else (total_epochs if self.by == "epoch" else total_iters)
            if end is None or end <= self.begin:
                raise ConfigError(f"{self.where}: weight_schedule type {self.type} needs `end` (its last "
                                  f"{self.by}) when the run's length is not known.")
            t = min(max((p - self.begin) / (float(end) - self.begin), 0.0), 1.0)
            if self.type == "linear":
                value = self.start_factor + (self.end_factor - self.start_factor) * t
            else:
                value = self.end_factor + (self.start_factor - self.end_factor) * (1 + math.cos(math.pi * t)) / 2
        if self.warmup and p < self.warmup:
            value *= p / self.warmup
        return value

    def describe(self) -> str:
        keys = ", ".join(f"{k}: {v}" for k, v in self.cfg.items() if k != "type")
        return f"{self.type}" + (f" ({keys})" if keys else "")

    def __repr__(self):
        return f"WeightSchedule({self.cfg!r})"


def build_schedule(cfg, where: str = "weight_schedule"):
    """None for no schedule (None or missing), else a WeightSchedule (a ConfigError for a bad one)."""
    if cfg is None:
        return None
    if isinstance(cfg, WeightSchedule):
        return cfg
    return WeightSchedule(cfg, where)
