"""PaddleClas's `Optimizer:` section -> the trainer's optimizer and lr_scheduler (slim/engine/optim.py).

    Optimizer:
      name: Momentum                 # Momentum, SGD, Adam, AdamW
      momentum: 0.9
      use_nesterov: False
      lr: {name: Cosine, learning_rate: 0.1, warmup_epoch: 5}       # slim/tasks/ppcls/schedule.py
      regularizer: {name: L2, coeff: 1.0e-4}                        # or weight_decay: 0.05 (AdamW: decoupled)
      no_weight_decay_name: .bias norm          # substrings of parameter names trained without decay
      one_dim_param_no_weight_decay: True       # 1-D parameters (BatchNorm, biases) without decay
      clip_norm: 10                              # paddle.nn.ClipGradByNorm: each gradient's own norm

As ppcls/optimizer/__init__.py and optimizer.py build it:
- `regularizer` wins over `weight_decay` when both are given (PaddleClas warns and ignores weight_decay);
  L2 `coeff` is paddle's L2Decay, applied to every trained parameter that has no regularizer of its own in
  its ParamAttr (paddle's rule, the same models here and there). AdamW's `weight_decay` is decoupled.
- Momentum groups parameters by `no_weight_decay_name` (and then `one_dim_param_no_weight_decay`) only when
  no_weight_decay_name is given, as PaddleClas's Momentum does; AdamW applies each on its own.
- `multi_precision` (PaddleClas's Momentum defaults to True) keeps float32 master weights of float16
  parameters: here the trainer turns it on for --amp_level O2, the one case with float16 parameters.
- PaddleClas's Momentum uses paddle's multi-tensor kernel when it exists; here the per-parameter kernel (the same
  update).
"""
from slim.distill.errors import ConfigError
from .schedule import PaddleClasSchedule, trainer_schedule

KINDS = ("Momentum", "SGD", "Adam", "AdamW")


def _number(value, what):
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number, got {value!r}") from None


def no_decay_names(opt_cfg, named_shapes):
    """Names of the parameters PaddleClas trains without weight decay (its Momentum and AdamW rules)."""
    name = opt_cfg.get("name", "Momentum")
    substrings = str(opt_cfg.get("no_weight_decay_name") or "").split()
    one_dim = bool(opt_cfg.get("one_dim_param_no_weight_decay", False))
    if name == "Momentum" and not substrings:
        return []  # PaddleClas's Momentum reads one_dim_param_no_weight_decay only beside no_weight_decay_name
    if name not in ("Momentum", "AdamW"):
        return []
    return [n for n, shape in named_shapes
            if any(s in n for s in substrings) or (one_dim and len(shape) == 1)]


def _decay_groups(opt_cfg, names, named_shapes):
    """custom_cfg entries (slim/engine/optim.py: a parameter joins the first entry whose name is part of its own)
    that take the decay off exactly `names`: PaddleClas's substrings, then the 1-D parameters they miss by name."""
    substrings = str(opt_cfg.get("no_weight_decay_name") or "").split()
    rest = [n for n in names if not any(s in n for s in substrings)]
    chosen = set(names)
    for n in rest:
        for other, _ in named_shapes:
            if other not in chosen and n in other:
                raise ConfigError(f"Optimizer one_dim_param_no_weight_decay: parameter {n!r} is part of the name of "
                                  f"{other!r}, so the two cannot be told apart here.")
    return [{"name": n, "weight_decay_mult": 0.0} for n in substrings + rest]


def optimizer_settings(opt_cfg, iters_per_epoch, epochs, log=print, named_shapes=None):
    """(optimizer, lr_scheduler) in the trainer's spelling from PaddleClas's Optimizer section.
    `epochs`: Global.epochs (a Fraction for --iters: iterations / iters_per_epoch); `named_shapes`: (name, shape)
    of the trained parameters, for no_weight_decay_name and one_dim_param_no_weight_decay."""
    if isinstance(opt_cfg, list):
        raise ConfigError("Optimizer as a list (one optimizer per part of the model) is not supported here; give one "
                          "Optimizer: {name: Momentum, ...}.")
    opt_cfg = dict(opt_cfg or {})
    name = opt_cfg.get("name", "Momentum")
    if name not in KINDS:
        raise ConfigError(f"Optimizer name {name!r} is not supported; supported: {', '.join(KINDS)}.")
    optimizer = {"type": name}
    if name == "Momentum":
        optimizer["momentum"] = _number(opt_cfg.get("momentum", 0.9), "Optimizer.momentum")
        optimizer["use_nesterov"] = bool(opt_cfg.get("use_nesterov", False))
    for key in ("beta1", "beta2", "epsilon"):
        if key in opt_cfg and name in ("Adam", "AdamW"):
            optimizer[key] = _number(opt_cfg[key], f"Optimizer.{key}")
    reg = opt_cfg.get("regularizer")
    if reg:
        if str(reg.get("name", "L2")).upper() != "L2":
            raise ConfigError(f"Optimizer.regularizer name {reg.get('name')!r} is not supported; use L2.")
        if opt_cfg.get("weight_decay") is not None:
            log(f"Optimizer: regularizer and weight_decay are both set; weight_decay {opt_cfg['weight_decay']} is not "
                f"used (as in PaddleClas)")
        optimizer["weight_decay"] = _number(reg.get("coeff", 0.0), "Optimizer.regularizer.coeff")
    elif opt_cfg.get("weight_decay") is not None:
        optimizer["weight_decay"] = _number(opt_cfg["weight_decay"], "Optimizer.weight_decay")
    if opt_cfg.get("clip_norm") is not None:
        optimizer["grad_clip_cfg"] = {"name": "ClipGradByNorm",
                                      "clip_norm": _number(opt_cfg["clip_norm"], "Optimizer.clip_norm")}
    if opt_cfg.get("no_weight_decay_name") or opt_cfg.get("one_dim_param_no_weight_decay"):
        if named_shapes is None:
            raise ConfigError("Optimizer no_weight_decay_name / one_dim_param_no_weight_decay need the model's "
                              "parameters; build the model before the optimizer settings.")
        names = no_decay_names(opt_cfg, named_shapes)
        if names and optimizer.get("weight_decay"):
            optimizer["custom_cfg"] = _decay_groups(opt_cfg, names, named_shapes)
            log(f"Optimizer: {len(names)} parameter(s) without weight decay (no_weight_decay_name "
                f"{opt_cfg.get('no_weight_decay_name')!r}, one_dim_param_no_weight_decay "
                f"{bool(opt_cfg.get('one_dim_param_no_weight_decay'))})")
        elif not names and name == "Momentum" and opt_cfg.get("one_dim_param_no_weight_decay"):
            log("Optimizer: one_dim_param_no_weight_decay is not used: PaddleClas's Momentum reads it only with "
                "no_weight_decay_name")
    if "lr" not in opt_cfg:
        raise ConfigError("Optimizer needs lr, e.g. lr: {name: Cosine, learning_rate: 0.1}")
    schedule = PaddleClasSchedule(opt_cfg["lr"], epochs, iters_per_epoch, log=log)
    log(schedule.describe())
    return optimizer, trainer_schedule(schedule)
