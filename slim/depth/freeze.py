"""Train only named parts of a model (the last stage of MixFormerV2-style training: a small head on a frozen model).

    freeze: ["*"]                   # patterns over parameter names (fnmatch); a bare name is a prefix:
    trainable: [decode_head.cls_seg] #   `head` means `head` and everything under `head.`

`freeze` is applied first, then `trainable`; `trainable` alone freezes everything else. Frozen
parameters get `stop_gradient=True` (the optimizer skips them: no update, no weight decay), and
sublayers whose parameters are all frozen are kept in eval mode while training (FrozenLayersEvalHook), so
their BatchNorm statistics do not move either: the frozen part ends bit-identical.
"""
import fnmatch

from slim.distill.adaptor import unwrap
from slim.distill.errors import ConfigError
from slim.engine.hooks import Hook


def _as_list(patterns, where):
    if patterns is None:
        return []
    if isinstance(patterns, str):
        return [patterns]
    if not isinstance(patterns, (list, tuple)) or not all(isinstance(p, str) for p in patterns):
        raise ConfigError(f"`{where}` must be a list of parameter-name patterns (e.g. [backbone, 'head.*']), "
                          f"got {patterns!r}")
    return list(patterns)


def matches(name, pattern):
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return name == pattern or name.startswith(pattern + ".")


def apply_freeze(model, freeze=None, trainable=None, log=print):
    """Set stop_gradient by pattern; returns (trainable parameter count, total count). A pattern that
    matches no parameter is an error naming the model's top-level parts."""
    model = unwrap(model)
    freeze, trainable = _as_list(freeze, "freeze"), _as_list(trainable, "trainable")
    if not freeze and not trainable:
        return None
    if trainable and not freeze:
        freeze = ["*"]
    named = list(model.named_parameters())
    for where, patterns in (("freeze", freeze), ("trainable", trainable)):
        for pattern in patterns:
            if not any(matches(n, pattern) for n, _ in named):
                parts = sorted({n.split(".")[0] for n, _ in named})
                raise ConfigError(f"`{where}` pattern {pattern!r} matches no parameter of "
                                  f"{type(model).__name__}. Its parameters start with: {', '.join(parts)} "
                                  f"(patterns are dotted parameter-name prefixes or fnmatch patterns like "
                                  f"'backbone.*').")
    for name, param in named:
        if any(matches(name, p) for p in freeze):
            param.stop_gradient = True
        if any(matches(name, p) for p in trainable):
            param.stop_gradient = False
    train_names = [n for n, p in named if not p.stop_gradient]
    n_train = sum(int(p.size) for _, p in named if not p.stop_gradient)
    n_total = sum(int(p.size) for _, p in named)
    shown = ", ".join(train_names[:6]) + (f", ... (+{len(train_names) - 6})" if len(train_names) > 6 else "")
    log(f"freeze {freeze}, trainable {trainable}: {n_train:,} of {n_total:,} parameters train "
        f"({len(train_names)} of {len(named)} tensors: {shown or 'none'})")
    return n_train, n_total


def frozen_sublayers(model):
    """The outermost sublayers that have parameters and all of them frozen."""
    model = unwrap(model)
    found = []
    for name, layer in model.named_sublayers():
        if any(name.startswith(f + ".") for f, _ in found):
            continue
        params = layer.parameters()
        if params and all(p.stop_gradient for p in params):
            found.append((name, layer))
    return found


class FrozenLayersEvalHook(Hook):
    """Keeps fully frozen sublayers in eval mode during training (BatchNorm statistics, dropout)."""

    def __init__(self, model):
        self.layers = frozen_sublayers(model)

    def before_train(self, trainer):
        if self.layers:
            trainer.log(f"kept in eval mode while training (all their parameters are frozen): "
                        + ", ".join(n for n, _ in self.layers[:8]) + (" ..." if len(self.layers) > 8 else ""))

    def before_step(self, trainer):
        # the trainer switches the whole model to train mode at the start and after each evaluation only
        if any(layer.training for _, layer in self.layers):
            for _, layer in self.layers:
                layer.eval()
