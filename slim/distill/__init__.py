"""The distillation engine: adaptors capture tensors, connectors align them, losses compare them.

It knows nothing about segmentation, detection or classification; task plug-ins live in `slim.tasks`.
"""
from .adaptor import MODEL_OUTPUT, AdaptorBase, FeatureRecorder, LayerRef
from .config import load_config
from .distiller import Distiller, DistillOutput, freeze_teacher
from .errors import (ConfigError, LayerNotFoundError, NonFiniteLossError, ShapeMismatchError, SlimError,
                     UnknownLossError)
from .layers import format_layers, list_layers
from .losses import build_loss
from .pairs import Pair, parse_pairs

__all__ = [
    "AdaptorBase", "FeatureRecorder", "LayerRef", "MODEL_OUTPUT", "load_config", "Distiller",
    "DistillOutput", "freeze_teacher", "ConfigError", "LayerNotFoundError", "NonFiniteLossError",
    "ShapeMismatchError", "SlimError", "UnknownLossError", "format_layers", "list_layers", "build_loss",
    "Pair", "parse_pairs",
]
