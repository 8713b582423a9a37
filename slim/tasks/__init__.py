"""Task plug-ins. The engine and the trainer reach a task only through this interface:

    task = get_task(config_dict)          # picked from `task:`, or from the shape of the config
    model = task.build_model(config_dict) # a paddle.nn.Layer
    inputs = task.example_inputs(config_dict, input_shape)

Each task implements `slim.tasks.base.TaskBase`; its module has a `Task` class and a `matches(cfg)`
function telling whether a config without `task:` is one of its configs. Task modules are imported
lazily, in the order below, so a segmentation run never imports ppdet and vice versa.
"""
import importlib

from slim.distill.errors import ConfigError

# ppcls (PaddleClas configs: Arch + Global) is asked before cls
_TASK_MODULES = {"seg": "slim.tasks.seg", "det": "slim.tasks.det", "ppcls": "slim.tasks.ppcls", "cls": "slim.tasks.cls"}


def task_names():
    return sorted(_TASK_MODULES)


def _module(name):
    try:
        return importlib.import_module(_TASK_MODULES[name])
    except ModuleNotFoundError as e:
        if e.name == _TASK_MODULES[name]:
            return None  # a task this installation does not ship
        raise


def detect_task_name(cfg):
    """`task:` when given; otherwise the first task whose `matches(cfg)` accepts the config."""
    if cfg.get("task"):
        name = cfg["task"]
        if name not in _TASK_MODULES or _module(name) is None:
            raise ConfigError(f"Unknown task {name!r}; known tasks: {', '.join(task_names())}")
        return name
    for name in _TASK_MODULES:
        module = _module(name)
        if module is not None and module.matches(cfg):
            return name
    model_type = (cfg.get("model") or {}).get("type") if isinstance(cfg.get("model"), dict) else None
    raise ConfigError(
        f"Cannot tell the task of this config (model type {model_type!r}). Set `task:` to one of "
        f"{', '.join(task_names())}, or use a model type of one of these tasks.")


def get_task(cfg):
    return _module(detect_task_name(cfg)).Task()
