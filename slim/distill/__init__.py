"""The distillation engine: adaptors capture tensors, connectors align them, losses compare them.

It knows nothing about segmentation, detection or classification; task plug-ins live in `slim.tasks`.

Public names (kept stable; README "Use it in your own training loop"):

    Distiller(student, teacher, pairs, StudentAdaptor=None, TeacherAdaptor=None)
        .build(*inputs)         one forward that sizes the connectors
        .parameters()           what the optimizer trains: the student's, the connectors' and those of
                                losses with trainable parameters (e.g. MGD's generator)
        (*inputs, label=None)   -> DistillOutput: student_out, teacher_out, losses (name -> weighted 0-D
                                   tensor), loss (their sum)
        .teacher_features(*inputs)  the teacher alone -> {name: tensor} (teacher_tensor_names()); pass
                                them back as (*inputs, teacher_features=...) to skip the teacher (a cache)
    parse_pairs(spec)           yaml `distill:` list, prepare_distill_config() list, PaddleSlim DistillConfig
                                list, or a yaml path -> [Pair]
    build_loss({type: NAME, ...}), losses.register_loss(NAME, *aliases)   the loss registry
    AdaptorBase, LayerRef, FeatureRecorder, MODEL_OUTPUT                   capturing tensors
    list_layers(model, *inputs), format_layers(rows)                       names and shapes to pair
    freeze_teacher(model), load_config(path, opts)
    SlimError, ConfigError, LayerNotFoundError, ShapeMismatchError, NonFiniteLossError, UnknownLossError
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
