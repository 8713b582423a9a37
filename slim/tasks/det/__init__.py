"""Object detection (PaddleDetection 2.6 models and configs): see task.py.

    task = Task(); model = task.build_model(cfg)     # cfg: a ppdet yaml loaded by slim.distill.config

Importing this package registers the detection distillation losses (`YOLOv3DistillLoss`, `FGDFeatureLoss`,
`LDLoss`) in the loss registry; `--slim_config` (PaddleDetection's distillation config) is read by slim_config.py.
"""
from . import distill_losses, losses  # noqa: F401  (register YOLOv3DistillLoss, FGDFeatureLoss, LDLoss)
from .task import Task, matches

__all__ = ["Task", "matches"]
