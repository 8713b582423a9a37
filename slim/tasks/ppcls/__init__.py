"""PaddleClas-format configs (`Arch:` + `Global:`): one model, or a DistillationModel with its Loss.Train list.

Commands (slim/apps/ppcls.py; tools/train.py, tools/eval.py, tools/export.py and
slim/distill/distill_train.py route such configs there):

    python tools/train.py -c configs/ppcls/ResNet50_vd_mnist.yaml -o Global.epochs=3
    python tools/train.py -c configs/ppcls/R50_vd_distill_MV3_mnist.yaml -o Arch.models.0.Teacher.pretrained=P
    python tools/eval.py -c X.yaml -o Global.pretrained_model=output/X/best_model
    python tools/export.py -c X.yaml -o Global.pretrained_model=P -o Global.save_inference_dir=D
"""
from .config import is_ppcls_config


def matches(cfg):
    """A config with both `Arch` and `Global` sections is PaddleClas's."""
    return cfg.get("task") == "ppcls" or is_ppcls_config(cfg)


def __getattr__(name):  # the Task class imports paddle: only when asked for
    if name == "Task":
        from .task import Task
        return Task
    raise AttributeError(name)


__all__ = ["Task", "matches"]
