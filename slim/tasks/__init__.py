"""Task plug-ins. The engine and the trainer reach a task only through this interface:

    task = get_task(config_dict)          # picked from `task:`, or from the shape of the config
    model = task.build_model(config_dict) # a paddle.nn.Layer
    inputs = task.example_inputs(config_dict, input_shape)

Each task implements `slim.tasks.base.TaskBase`.

Task modules are imported lazily, so a segmentation run never imports ppdet and vice versa.
"""
import importlib

from slim.distill.errors import ConfigError

_TASK_MODULES = {"seg": "slim.tasks.seg"}


def task_names():
    return sorted(_TASK_MODULES)


def detect_task_name(cfg):
    """`task:` when given; otherwise a config whose `model.type` is a PaddleSeg model is 'seg'."""
    if cfg.get("task"):
        name = cfg["task"]
        if name not in _TASK_MODULES:
            raise ConfigError(f"Unknown task {name!r}; known tasks: {', '.join(task_names())}")
        return name
    model_type = (cfg.get("model") or {}).get("type")
    if model_type and importlib.import_module("slim.tasks.seg").is_seg_model(model_type):
        return "seg"
    raise ConfigError(
        f"Cannot tell the task of this config (model type {model_type!r}). Set `task:` to one of "
        f"{', '.join(task_names())}, or use a model type of one of these tasks.")


def get_task(cfg):
    return importlib.import_module(_TASK_MODULES[detect_task_name(cfg)]).Task()
