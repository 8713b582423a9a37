"""Semantic segmentation with PaddleSeg models, datasets, transforms and losses."""
from .task import Task, build_component, is_seg_model


def matches(cfg):
    """A config whose `model.type` is a PaddleSeg model."""
    model = cfg.get("model")
    return isinstance(model, dict) and bool(model.get("type")) and is_seg_model(model["type"])


__all__ = ["Task", "build_component", "is_seg_model", "matches"]
