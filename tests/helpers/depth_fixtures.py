"""Tiny models with blocks in LayerLists, and tiny segmentation pipelines on real nuclei slices."""
import os

import paddle.nn as nn

from slim.datasets import nuclei
from tests.helpers.seg_fixtures import nuclei_config, write_yaml


def segformer(depths, num_classes=2):
    """SegFormer's head on a tiny MSCAN backbone (paddleseg): blocks in backbone.block1..block4 (LayerLists).
    (SegNeXt's own head draws random bases at every forward, so its outputs are not reproducible.)"""
    return {"type": "SegFormer", "num_classes": num_classes, "embedding_dim": 16,
            "backbone": {"type": "MSCAN", "embed_dims": [8, 16, 16, 16], "depths": list(depths),
                         "mlp_ratios": [2, 2, 2, 2], "drop_path_rate": 0.0}}


TEACHER_DEPTHS = [1, 1, 4, 1]
STUDENT_DEPTHS = [1, 1, 2, 1]


def make_depth_configs(root, crop=64):
    """Nuclei slices (4 train / 2 val) and configs of the D=4 and D=2 (block3) SegFormer-MSCAN models."""
    data = os.path.join(root, "data")
    if not os.path.isfile(os.path.join(data, "train.txt")):
        nuclei.prepare(data, train_slices="22-25", val_slices="40-41")
    base = nuclei_config(data, crop)
    deep = dict(base, model=segformer(TEACHER_DEPTHS))
    shallow = dict(base, model=segformer(STUDENT_DEPTHS), distill_loss={"types": [{"type": "KLLoss"}], "coef": [1]})
    return {"deep": write_yaml(os.path.join(root, "deep.yml"), deep),
            "shallow": write_yaml(os.path.join(root, "shallow.yml"), shallow), "data": data}


def flow_pipeline(root, configs, iters=4, **overrides):
    """The multi-stage flow on the tiny models: distil (deep), remove + cut, fine-tune (shallow), head only."""
    stages = [
        {"name": "distil", "teacher": {"config": configs["deep"]}, "student": configs["deep"], "iters": iters,
         "distill_loss": {"types": [{"type": "KLLoss"}], "coef": [1]}},
        {"name": "remove", "teacher": "previous", "student": configs["deep"], "init": "teacher", "iters": iters,
         "remove_layers": [1, 3], "block_list": "backbone.block3", "remove_iters": iters - 1,
         "distill_layers_student": [0, 2], "distill_layers_teacher": [0, 2], "distill_loss": None},
        {"name": "finetune", "teacher": {"stage": "distil"}, "student": configs["shallow"], "init": "previous",
         "distill_layers": "previous", "iters": iters},
        {"name": "head", "student": configs["shallow"], "init": "previous", "trainable": ["linear_pred"],
         "iters": 2},
    ]
    for key, value in overrides.items():
        index, field = key.split("__")
        stages[int(index)][field] = value
    return write_yaml(os.path.join(root, "flow.yml"), {"defaults": {"seed": 0, "log_iters": 1, "save_interval": 2},
                                                         "stages": stages})


class TinyViT(nn.Layer):
    """A small vision transformer for classification: patch embedding, `blocks` (LayerList), head."""

    def __init__(self, depth=6, dim=16, num_classes=5, patch=4, image=16):
        super().__init__()
        self.patch_embed = nn.Conv2D(3, dim, patch, stride=patch)
        self.pos = self.create_parameter([1, (image // patch) ** 2, dim],
                                         default_initializer=nn.initializer.Normal(std=0.02))
        self.blocks = nn.LayerList([nn.TransformerEncoderLayer(dim, 2, dim * 2, dropout=0.0) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose([0, 2, 1]) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(axis=1))


def vision_resnet18(num_classes=5):
    """paddle.vision's ResNet-18: stages layer1..layer4 are Sequentials of BasicBlocks."""
    from paddle.vision.models import resnet18
    return resnet18(num_classes=num_classes)
