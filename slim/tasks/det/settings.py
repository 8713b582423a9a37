"""PaddleDetection's training sections, translated into the shared trainer's settings.

    TrainReader.batch_size          -> batch_size (per process; `--batch_size` / top-level batch_size win)
    epoch                           -> epochs (`--iters` / `--epochs` win)
    LearningRate.base_lr            -> lr_scheduler.learning_rate (`--learning_rate` wins)
    LearningRate.schedulers:
      PiecewiseDecay {milestones (epochs), gamma | values}
                                    -> a piecewise-constant schedule; milestones in iterations after warm-up
      CosineDecay {max_epochs, min_lr_ratio}
                                    -> CosineAnnealingDecay over max_epochs (or the run), eta_min; a run
                                       longer than max_epochs holds eta_min after them (ppdet's behaviour)
      LinearWarmup {steps | epochs, start_factor}
                                    -> warmup_iters | warmup_epochs, warmup_start_lr = base_lr * start_factor
    OptimizerBuilder.optimizer {type, momentum, ...}, regularizer {type: L2, factor}, clip_grad_by_norm
                                    -> optimizer {type, momentum, weight_decay, grad_clip_cfg}
    reference_batch_size            -> kept; when absent: TrainReader.batch_size x reference_gpus (default 1)
    use_ema, ema_decay, ema_decay_type, ema_black_list
                                    -> ema {decay, type, black_list} (the trainer's moving average, ema.py)

The trainer scales the learning rate and the warm-up linearly when the run's total batch (per-process
batch x processes) differs from reference_batch_size (the rule PaddleDetection's distillation docs ask users to apply by hand).
"""
import math

from slim.distill.errors import ConfigError
from slim.engine.optim import warmup_iters_of

SCHEDULERS = ("PiecewiseDecay", "CosineDecay", "LinearWarmup")


def _kind(entry, where):
    if isinstance(entry, dict):
        kind = entry.get("type") or entry.get("name")
        if kind:
            return kind, {k: v for k, v in entry.items() if k not in ("type", "name")}
        if len(entry) == 1:
            name, args = next(iter(entry.items()))
            return name, dict(args or {})
    raise ConfigError(f"{where}: write each scheduler as `- !PiecewiseDecay {{gamma: 0.1, milestones: [8, 11]}}` "
                      f"(or `- {{type: PiecewiseDecay, ...}}`), got {entry!r}")


class CosineFactor:
    """lr factor of a step: a half cosine from 1 down to `min_ratio` over `steps`, then `min_ratio`
    (ppdet's CosineDecay holds its last value after max_epochs; paddle's CosineAnnealingDecay would
    climb back up)."""

    def __init__(self, steps, min_ratio=0.0):
        self.steps, self.min_ratio = max(int(steps), 1), float(min_ratio)

    def __call__(self, step):
        if step >= self.steps:
            return self.min_ratio
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * step / self.steps))


class PiecewiseFactor:
    """lr factor of a step: factors[i] after the i-th boundary (a picklable callable for LambdaDecay)."""

    def __init__(self, boundaries, factors):
        self.boundaries, self.factors = list(boundaries), list(factors)

    def __call__(self, step):
        i = sum(1 for b in self.boundaries if step >= b)
        return self.factors[i]


def _piecewise(args, base_lr, iters_per_epoch):
    milestones = [int(m) for m in args.get("milestones", [8, 11])]
    if args.get("values") is not None:
        values = [float(v) for v in args["values"]]
        if len(values) != len(milestones) + 1:
            raise ConfigError(f"PiecewiseDecay: {len(milestones)} milestones need {len(milestones) + 1} values, "
                              f"got {len(values)}.")
        factors = [v / base_lr for v in values]
    else:
        gamma = args.get("gamma", [0.1, 0.01])
        if not isinstance(gamma, (list, tuple)):  # ppdet: a scalar gamma g gives g, g/10, g/100, ...
            gamma = [float(gamma) / 10 ** i for i in range(len(milestones))]
        if len(gamma) != len(milestones):
            raise ConfigError(f"PiecewiseDecay: {len(milestones)} milestones but {len(gamma)} gamma values.")
        factors = [1.0] + [float(g) for g in gamma]
    boundaries = [m * iters_per_epoch for m in milestones]
    return {"type": "LambdaDecay", "learning_rate": base_lr, "lr_lambda": PiecewiseFactor(boundaries, factors)}


def translate_lr(cfg, iters_per_epoch):
    lr_cfg = cfg.get("LearningRate")
    if not lr_cfg:
        raise ConfigError("The config has no `LearningRate:` (ppdet) nor `lr_scheduler:` section; add e.g. "
                          "LearningRate: {base_lr: 0.001, schedulers: [!CosineDecay {max_epochs: 100}]}.")
    if "base_lr" not in lr_cfg:
        raise ConfigError("LearningRate needs base_lr.")
    base_lr = float(cfg["learning_rate"]) if cfg.get("learning_rate") is not None else float(lr_cfg["base_lr"])
    out = {"type": "Constant", "learning_rate": base_lr}
    decay_seen = False
    for i, entry in enumerate(lr_cfg.get("schedulers") or []):
        kind, args = _kind(entry, f"LearningRate.schedulers[{i}]")
        if kind == "LinearWarmup":
            if args.get("epochs") is not None:
                out["warmup_epochs"] = float(args["epochs"])
            else:
                out["warmup_iters"] = int(args.get("steps", 500))
            out["warmup_start_lr"] = base_lr * float(args.get("start_factor", 1.0 / 3))
        elif kind in ("PiecewiseDecay", "CosineDecay"):
            if decay_seen:
                raise ConfigError("LearningRate.schedulers: give one decay (PiecewiseDecay or CosineDecay).")
            decay_seen = True
            if kind == "PiecewiseDecay":
                out.update(_piecewise(args, base_lr, iters_per_epoch))
            else:
                out["type"] = "CosineAnnealingDecay"
                if args.get("max_epochs") is not None:
                    out["T_max"] = max(int(args["max_epochs"]) * iters_per_epoch, 1)
                out["eta_min"] = base_lr * float(args.get("min_lr_ratio", 0.0))
                if args.get("last_plateau_epochs"):
                    raise ConfigError("CosineDecay.last_plateau_epochs is not supported here; remove it.")
        else:
            raise ConfigError(f"LearningRate.schedulers[{i}]: {kind!r} is not supported; use "
                              f"{', '.join(SCHEDULERS)}.")
    if out.get("type") == "CosineAnnealingDecay" and "T_max" in out:
        # the cosine runs after the warm-up
        out["T_max"] = max(out["T_max"] - warmup_iters_of(out, iters_per_epoch), 1)
    return out


def hold_cosine_minimum(lr, settings, iters_per_epoch):
    """A run longer than CosineDecay's max_epochs holds the minimum lr after it (as ppdet does), instead of
    following paddle's CosineAnnealingDecay back up to the base lr."""
    if lr.get("type") != "CosineAnnealingDecay" or "T_max" not in lr:
        return lr
    total = int(settings["iters"]) if settings.get("iters") else int(settings.get("epochs", 0)) * iters_per_epoch
    if total - warmup_iters_of(lr, iters_per_epoch) <= lr["T_max"]:
        return lr
    out = {k: v for k, v in lr.items() if k not in ("type", "T_max", "eta_min")}
    ratio = lr.get("eta_min", 0.0) / lr["learning_rate"] if lr["learning_rate"] else 0.0
    out.update(type="LambdaDecay", lr_lambda=CosineFactor(lr["T_max"], ratio))
    return out


def translate_optimizer(cfg):
    builder = cfg.get("OptimizerBuilder") or {}
    opt = dict(builder.get("optimizer") or {"type": "Momentum", "momentum": 0.9})
    kind = opt.pop("type", opt.pop("name", "Momentum"))
    out = {"type": kind, **opt}
    reg = builder.get("regularizer")
    if reg:
        reg_kind = reg.get("type") or reg.get("name") or "L2"
        if str(reg_kind).upper() != "L2":
            raise ConfigError(f"OptimizerBuilder.regularizer type {reg_kind!r}: only L2 is supported.")
        out["weight_decay"] = float(reg.get("factor", 0.0))
    if builder.get("clip_grad_by_norm"):
        out["grad_clip_cfg"] = {"name": "ClipGradByGlobalNorm", "clip_norm": float(builder["clip_grad_by_norm"])}
    return out


def per_process_batch(cfg):
    if cfg.get("batch_size"):
        return int(cfg["batch_size"])
    return int((cfg.get("TrainReader") or {}).get("batch_size") or 1)


def length(cfg):
    if cfg.get("iters"):
        return {"iters": int(cfg["iters"])}
    if cfg.get("epochs"):
        return {"epochs": int(cfg["epochs"])}
    if cfg.get("epoch"):
        return {"epochs": int(cfg["epoch"])}
    raise ConfigError("Set the length of training: `epoch:` (ppdet), or `iters:` / --iters.")


def reference_batch(cfg):
    if cfg.get("reference_batch_size"):
        return int(cfg["reference_batch_size"])
    reader = cfg.get("TrainReader") or {}
    if reader.get("batch_size"):
        return int(reader["batch_size"]) * int(cfg.get("reference_gpus") or 1)
    return None


def translate_ema(cfg):
    if not cfg.get("use_ema"):
        return None
    if int(cfg.get("cycle_epoch", -1) or -1) > 0:
        raise ConfigError("cycle_epoch (resetting the EMA every N epochs) is not supported; remove it or set "
                          "cycle_epoch: -1.")
    return {"decay": cfg.get("ema_decay", 0.9998), "type": cfg.get("ema_decay_type", "threshold"),
            "black_list": cfg.get("ema_black_list") or []}


def training_settings(cfg, iters_per_epoch):
    """The trainer's settings from a ppdet config (engine-style keys given in the config win)."""
    out = dict(cfg)
    out["batch_size"] = per_process_batch(cfg)
    out.pop("iters", None)
    out.pop("epochs", None)
    out.update(length(cfg))
    if not cfg.get("lr_scheduler"):
        out["lr_scheduler"] = hold_cosine_minimum(translate_lr(cfg, iters_per_epoch), out, iters_per_epoch)
        out.pop("learning_rate", None)
    if not cfg.get("optimizer"):
        out["optimizer"] = translate_optimizer(cfg)
    ref = reference_batch(cfg)
    if ref:
        out["reference_batch_size"] = ref
    if "ema" not in cfg:
        out["ema"] = translate_ema(cfg)
    return out
