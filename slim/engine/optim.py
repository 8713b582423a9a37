"""Optimizer and learning-rate schedule from PaddleSeg-style config sections.

    optimizer:
      type: SGD                 # SGD (with momentum: Momentum), Momentum, Adam, AdamW
      momentum: 0.9
      weight_decay: 4.0e-5
      grad_clip_cfg: {name: ClipGradByGlobalNorm, clip_norm: 10}
      custom_cfg: [{name: backbone, lr_mult: 0.1}]   # per-parameter-group multipliers
    lr_scheduler:
      type: PolynomialDecay     # any class of paddle.optimizer.lr; decay_steps/T_max default to the run
      learning_rate: 0.01
      end_lr: 0
      power: 0.9
      warmup_iters: 50          # or warmup_epochs: 1
      warmup_start_lr: 1.0e-5

A bare `learning_rate: 0.01` at the top level means a constant rate.
"""
import inspect

import paddle

from slim.distill.errors import ConfigError

_OPTIMIZERS = {"sgd": "SGD", "momentum": "Momentum", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSProp",
               "lamb": "Lamb"}


def warmup_iters_of(lr_cfg, iters_per_epoch):
    if "warmup_epochs" in lr_cfg and "warmup_iters" in lr_cfg:
        raise ConfigError("lr_scheduler: give warmup_iters or warmup_epochs, not both.")
    if "warmup_epochs" in lr_cfg:
        return int(round(float(lr_cfg["warmup_epochs"]) * iters_per_epoch))
    return int(lr_cfg.get("warmup_iters", 0) or 0)


def build_lr_scheduler(cfg, total_iters, iters_per_epoch, lr_scale=1.0, warmup_scale=1.0):
    """The schedule of the whole run (stepped once per iteration). `lr_scale` multiplies every rate,
    `warmup_scale` the warm-up length."""
    lr_cfg = dict(cfg.get("lr_scheduler") or {})
    if not lr_cfg:
        if "learning_rate" not in cfg:
            raise ConfigError("The config has neither `lr_scheduler` nor `learning_rate`; add e.g. "
                              "lr_scheduler: {type: PolynomialDecay, learning_rate: 0.01, power: 0.9}.")
        lr_cfg = {"type": "Constant", "learning_rate": cfg["learning_rate"]}
    warmup = int(round(warmup_iters_of(lr_cfg, iters_per_epoch) * warmup_scale))
    lr_cfg.pop("warmup_iters", None)
    lr_cfg.pop("warmup_epochs", None)
    warmup_start = float(lr_cfg.pop("warmup_start_lr", 0.0)) * lr_scale
    kind = lr_cfg.pop("type", "PolynomialDecay")
    if "learning_rate" not in lr_cfg:
        raise ConfigError(f"lr_scheduler ({kind}) needs `learning_rate`.")
    base_lr = float(lr_cfg["learning_rate"]) * lr_scale
    lr_cfg["learning_rate"] = base_lr
    for key in ("end_lr", "eta_min"):
        if key in lr_cfg:
            lr_cfg[key] = float(lr_cfg[key]) * lr_scale
    decay_iters = max(total_iters - warmup, 1)
    if kind == "Constant":
        schedule = base_lr
    elif kind == "PiecewiseDecay":  # values[k] after the k-th boundary (iterations); learning_rate is values[0]
        boundaries, values = lr_cfg.pop("boundaries", None), lr_cfg.pop("values", None)
        if not boundaries or not values or len(values) != len(boundaries) + 1:
            raise ConfigError("lr_scheduler PiecewiseDecay needs boundaries (iterations) and values (one more "
                              "value than boundaries).")
        schedule = paddle.optimizer.lr.PiecewiseDecay([int(b) for b in boundaries],
                                                      [float(v) * lr_scale for v in values])
    else:
        cls = getattr(paddle.optimizer.lr, kind, None)
        if not (isinstance(cls, type) and issubclass(cls, paddle.optimizer.lr.LRScheduler)):
            known = sorted(n for n, c in vars(paddle.optimizer.lr).items()
                           if isinstance(c, type) and issubclass(c, paddle.optimizer.lr.LRScheduler)
                           and c is not paddle.optimizer.lr.LRScheduler)
            raise ConfigError(f"lr_scheduler type {kind!r} is not a paddle.optimizer.lr schedule; use one of "
                              f"Constant, {', '.join(known)}.")
        params = inspect.signature(cls.__init__).parameters
        if "decay_steps" in params:
            lr_cfg.setdefault("decay_steps", decay_iters)
        if "T_max" in params:
            lr_cfg.setdefault("T_max", decay_iters)
        try:
            schedule = cls(**lr_cfg)
        except TypeError as e:
            raise ConfigError(f"lr_scheduler {kind} could not be built from {lr_cfg}: {e}") from None
    if warmup > 0:
        return paddle.optimizer.lr.LinearWarmup(schedule, warmup_steps=warmup, start_lr=warmup_start,
                                                end_lr=base_lr)
    if isinstance(schedule, float):
        return paddle.optimizer.lr.LambdaDecay(schedule, lambda _: 1.0)  # a scheduler, so state is saved
    return schedule


def _param_groups(named_params, custom_cfg, base_decay):
    if not custom_cfg:
        return [p for _, p in named_params]
    groups = [{"params": []} for _ in custom_cfg] + [{"params": []}]
    for name, param in named_params:
        for i, item in enumerate(custom_cfg):
            if item["name"] in name:
                groups[i]["params"].append(param)
                break
        else:
            groups[-1]["params"].append(param)
    for group, item in zip(groups, custom_cfg):
        group["learning_rate"] = float(item.get("lr_mult", 1.0))
        if "weight_decay_mult" in item and base_decay is not None:
            group["weight_decay"] = float(base_decay) * float(item["weight_decay_mult"])
    return [g for g in groups if g["params"]]


def build_optimizer(cfg, named_params, lr, multi_precision=False):
    """An optimizer over the trainable (`stop_gradient=False`) parameters among `named_params`.
    `multi_precision`: float32 master weights for low-precision parameters (mixed precision O2)."""
    opt_cfg = dict(cfg.get("optimizer") or {"type": "SGD", "momentum": 0.9})
    kind = str(opt_cfg.pop("type", "SGD"))
    if kind.lower() == "sgd" and opt_cfg.get("momentum"):
        kind = "Momentum"
    name = _OPTIMIZERS.get(kind.lower())
    if name is None:
        raise ConfigError(f"optimizer type {kind!r} is not supported; use one of "
                          f"{', '.join(sorted(set(_OPTIMIZERS.values())))}.")
    if name == "SGD":
        opt_cfg.pop("momentum", None)
    trainable = [(n, p) for n, p in named_params if not p.stop_gradient]
    if not trainable:
        raise ConfigError("No parameter is trainable: every parameter is frozen (check `freeze:` / "
                          "`trainable:` patterns).")
    clip = opt_cfg.pop("grad_clip_cfg", None)
    if clip:
        clip = dict(clip)
        clip_name = clip.pop("name", "ClipGradByGlobalNorm")
        opt_cfg["grad_clip"] = getattr(paddle.nn, clip_name)(**clip)
    decay = opt_cfg.get("weight_decay")
    if decay is not None:
        opt_cfg["weight_decay"] = float(decay)
    params = _param_groups(trainable, opt_cfg.pop("custom_cfg", None), decay)
    if multi_precision and name != "RMSProp":
        opt_cfg["multi_precision"] = True
    try:
        return getattr(paddle.optimizer, name)(learning_rate=lr, parameters=params, **opt_cfg)
    except TypeError as e:
        raise ConfigError(f"optimizer {name} could not be built from {opt_cfg}: {e}") from None
