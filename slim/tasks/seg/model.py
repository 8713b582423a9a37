"""Build PaddleSeg components (models, backbones, losses, ...) from `{type: NAME, ...}` dicts."""
import copy

import paddle

from slim.distill.errors import ConfigError
from slim.distill.config import register_config_keys

register_config_keys("val_transforms")


def _managers():
    import paddleseg  # noqa: F401  (registers the components)
    from paddleseg.cvlibs import manager
    return [manager.MODELS, manager.BACKBONES, manager.DATASETS, manager.TRANSFORMS, manager.LOSSES,
            manager.OPTIMIZERS]


def is_seg_model(type_name):
    from paddleseg.cvlibs import manager
    return type_name in manager.MODELS.components_dict


def _component_class(type_name):
    for registry in _managers():
        if type_name in registry.components_dict:
            return registry[type_name]
    from paddleseg.cvlibs import manager
    known = sorted(manager.MODELS.components_dict)
    raise ConfigError(f"PaddleSeg has no component {type_name!r}. Models: {', '.join(known)}")


def build_component(cfg):
    """Recursively build `{type: NAME, **kwargs}`; nested dicts with `type` are built first."""
    cfg = copy.deepcopy(dict(cfg))
    if "type" not in cfg:
        raise ConfigError(f"Cannot build a component from {cfg!r}: it has no `type`.")
    cls = _component_class(cfg.pop("type"))
    kwargs = {}
    for key, value in cfg.items():
        if isinstance(value, dict) and "type" in value:
            value = build_component(value)
        elif isinstance(value, list):
            value = [build_component(v) if isinstance(v, dict) and "type" in v else v for v in value]
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"Could not build {cls.__name__} with {sorted(kwargs)}: {e}") from e


class Task:
    name = "seg"

    def build_model(self, model_cfg):
        if not model_cfg:
            raise ConfigError("The config has no `model` section.")
        return build_component(model_cfg)

    def example_inputs(self, cfg, input_shape=None):
        shape = list(input_shape or [1, 3, 256, 256])
        return (paddle.randn(shape),)
