"""Tiny classification runs on the real MNIST-5k data: a few images per class, tiny ConvNets, 28 px."""
import os

import yaml

from slim.datasets import mnist

NORMALIZE = {"type": "Normalize", "mean": [0.1307], "std": [0.3081]}
TEACHER_MODEL = {"type": "ConvNet", "channels": [8, 16], "embedding_dim": 32, "num_classes": 10, "in_channels": 1}
STUDENT_MODEL = {"type": "ConvNet", "channels": [4], "pool": 2, "num_classes": 10, "in_channels": 1}


def base_config(data, iters=4, batch_size=16):
    return {
        "task": "cls",
        "batch_size": batch_size, "iters": iters,
        "train_dataset": {"type": "ClsFileList", "dataset_root": data, "file_list": os.path.join(data, "train_list.txt"),
                          "color": "gray", "transforms": [{"type": "RandomCrop", "size": 28, "padding": 2}, NORMALIZE]},
        "val_dataset": {"type": "ImageFolder", "dataset_root": os.path.join(data, "val"), "color": "gray",
                        "transforms": [NORMALIZE]},
        "optimizer": {"type": "AdamW", "weight_decay": 1.0e-4},
        "lr_scheduler": {"type": "CosineAnnealingDecay", "learning_rate": 0.01, "warmup_iters": 1},
        "loss": {"types": [{"type": "CrossEntropyLoss"}], "coef": [0.5]},
    }


def make_tiny_cls(root, per_class=6):
    """MNIST with `per_class` images per class and split under root/data; teacher and student configs."""
    data = os.path.join(root, "data")
    mnist.prepare(data, per_class=per_class)
    base = base_config(data)
    paths = {"data": data}
    paths["teacher"] = write_yaml(os.path.join(root, "teacher.yml"), dict(base, model=TEACHER_MODEL))
    kd = {"types": [{"type": "KLLoss", "temperature": 4}], "coef": [0.5]}
    paths["student"] = write_yaml(os.path.join(root, "student.yml"), dict(base, model=STUDENT_MODEL, distill_loss=kd))
    paths["head_fixed"] = write_yaml(os.path.join(root, "student_head_fixed.yml"),
                                     dict(base, model=STUDENT_MODEL, distill_loss=kd, head_from_teacher=True,
                                          embedding_projection=True))
    paths["head_no_projection"] = write_yaml(os.path.join(root, "student_head_no_projection.yml"),
                                             dict(base, model=STUDENT_MODEL, distill_loss=kd, head_from_teacher=True))
    paths["features"] = write_yaml(os.path.join(root, "student_features.yml"), dict(
        base, model=STUDENT_MODEL,
        distill_loss={"types": [{"type": "DKDLoss", "alpha": 1, "beta": 2, "temperature": 2}], "coef": [0.5]},
        distill=[{"name": "embedding_l2", "student": "embedding", "teacher": "embedding", "loss": "L2Loss",
                  "weight": 0.1, "align": {"type": "linear"}}]))
    return paths


def write_yaml(path, data):
    with open(path, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    return path
