"""Semantic segmentation with PaddleSeg models, datasets, transforms and losses."""
from .task import Task, build_component, is_seg_model

__all__ = ["Task", "build_component", "is_seg_model"]
