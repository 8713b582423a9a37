"""Distillation losses. Build one with `build_loss({'type': NAME, **args})`, call it as
`loss(student, teacher)` (and `label=` for the losses whose `uses_label` is true).

Class attributes the distiller reads:
- `uses_label`: the loss takes the ground-truth label (`label=`).
- `same_shape`: student and teacher tensors must have equal shapes (connectors fix channels,
  resizing fixes H, W); losses that compare statistics (AT, RKD) set it to False.
- `pair_arity`: 1, or 2 for losses called with a pair of maps per side (FSP).
"""
from .registry import LOSSES, build_loss, get_loss_class, known_losses, register_loss
from . import kd, distance, cwd, fsp, attention, rkd, correlation, generation  # noqa: F401  (register the losses)

__all__ = ["LOSSES", "build_loss", "get_loss_class", "known_losses", "register_loss"]
