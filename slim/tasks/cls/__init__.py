"""Image classification and feature-matching retrieval, with a frozen shared head."""
from .models import BACKBONES, Classifier, build_classifier, is_cls_model
from .task import Task


def matches(cfg):
    """A config with `task: cls`, or whose `model.type` is a model of this package's registry."""
    if cfg.get("task") == "cls":
        return True
    model = cfg.get("model")
    return isinstance(model, dict) and is_cls_model(model.get("type"))


__all__ = ["BACKBONES", "Classifier", "Task", "build_classifier", "is_cls_model", "matches"]
