"""Tiny segmentation runs on the real nuclei data: few slices, 64 px crops, a DeepLabV3P-ResNet18_vd."""
import os

import yaml

from slim.datasets import nuclei

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODEL = {"type": "DeepLabV3P", "num_classes": 2, "backbone_indices": [0, 3], "aspp_ratios": [1, 6, 12, 18],
         "aspp_out_channels": 256, "align_corners": False,
         "backbone": {"type": "ResNet18_vd", "output_stride": 16, "multi_grid": [1, 1, 1]}}


def make_tiny_seg(root, crop=64):
    """Prepare 6 train / 2 val nuclei slices (ones with nuclei) under root/data and write teacher and student configs."""
    data = os.path.join(root, "data")
    nuclei.prepare(data, train_slices="22-27", val_slices="40-41")
    base = dict(nuclei_config(data, crop, [{"type": "RandomHorizontalFlip"}]), model=MODEL)
    paths = {}
    teacher = dict(base)
    paths["teacher"] = write_yaml(os.path.join(root, "teacher.yml"), teacher)
    student = dict(base, distill_loss={"types": [{"type": "KLLoss"}], "coef": [3]})
    paths["student"] = write_yaml(os.path.join(root, "student.yml"), student)
    feat = dict(student, distill=[{"name": "cwd_stage2", "student": "backbone.bb_2_1",
                                   "teacher": "backbone.bb_2_1", "loss": {"type": "SegChannelwiseLoss", "tau": 2},
                                   "weight": 0.5, "align": {"type": "1x1conv"}}])
    paths["feat"] = write_yaml(os.path.join(root, "student_feat.yml"), feat)
    paths["data"] = data
    return paths


def write_yaml(path, data):
    with open(path, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    return path


def nuclei_config(data, crop=64, extra_train_transforms=()):
    """A PaddleSeg training config (no model) on the nuclei data under `data`: 2 per batch, 4 iterations."""
    return {
        "batch_size": 2, "iters": 4,
        "train_dataset": {"type": "Dataset", "dataset_root": data, "train_path": os.path.join(data, "train.txt"),
                          "num_classes": 2, "mode": "train",
                          "transforms": [{"type": "RandomPaddingCrop", "crop_size": [crop, crop]},
                                         *extra_train_transforms, {"type": "Normalize"}]},
        "val_dataset": {"type": "Dataset", "dataset_root": data, "val_path": os.path.join(data, "val.txt"),
                        "num_classes": 2, "mode": "val", "transforms": [{"type": "Normalize"}]},
        "optimizer": {"type": "SGD", "momentum": 0.9, "weight_decay": 4.0e-5},
        "lr_scheduler": {"type": "PolynomialDecay", "learning_rate": 0.01, "end_lr": 0, "power": 0.9},
        "loss": {"types": [{"type": "CrossEntropyLoss"}], "coef": [1]},
    }
