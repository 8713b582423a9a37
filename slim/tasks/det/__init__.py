"""Object detection (PaddleDetection 2.6 models and configs): see task.py.

    task = Task(); model = task.build_model(cfg)     # cfg: a ppdet yaml loaded by slim.distill.config

Importing this package registers the YOLOv3 distillation loss (`YOLOv3DistillLoss`) in the loss registry.
"""
from . import losses  # noqa: F401  (registers YOLOv3DistillLoss)
from .task import Task, matches

__all__ = ["Task", "matches"]
