"""Tiny detection runs on the real tree tiles: 4 train tiles (one of them without boxes), 2 val tiles, 64 px
inputs, PP-YOLO-Tiny-shaped models of a few ten thousand parameters, written as ppdet yaml with `_BASE_`."""
import os
import shutil
import xml.etree.ElementTree as ET

import yaml

from slim.datasets import trees

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZE = 64
# the tree anchors of configs/det, scaled from 256 px tiles to SIZE
ANCHORS = [[max(int(round(w * SIZE / 256)), 2), max(int(round(h * SIZE / 256)), 2)] for w, h in
           [[16, 17], [24, 23], [21, 35], [27, 31], [33, 34], [43, 35], [37, 43], [48, 50], [66, 64]]]
MASKS = [[6, 7, 8], [3, 4, 5], [0, 1, 2]]


def prepare_trees(root):
    """The real trees dataset (prepared once per test session) with tiny lists: 4 train (1 empty), 2 val."""
    data = os.path.join(root, "trees")
    trees.prepare(data)
    with open(os.path.join(data, "train.txt")) as f:
        train = [line.split() for line in f if line.strip()]
    with open(os.path.join(data, "val.txt")) as f:
        val = [line.split() for line in f if line.strip()]
    # an image without boxes: a copy of a tile whose xml lists no object
    img, xml = train[0]
    shutil.copy(os.path.join(data, img), os.path.join(data, "JPEGImages", "empty.jpg"))
    tree = ET.parse(os.path.join(data, xml))
    for obj in tree.getroot().findall("object"):
        tree.getroot().remove(obj)
    tree.write(os.path.join(data, "Annotations", "empty.xml"))
    lines = [" ".join(p) for p in train[1:4]] + ["JPEGImages/empty.jpg Annotations/empty.xml"]
    write_lines(os.path.join(data, "train_tiny.txt"), lines)
    write_lines(os.path.join(data, "val_tiny.txt"), [" ".join(p) for p in val[:2]])
    return data


def write_lines(path, lines):
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def dataset_yaml(data, anno):
    return {"type": "VOCDataSet", "dataset_dir": data, "image_dir": "", "anno_path": anno,
            "label_list": "label_list.txt", "data_fields": ["image", "gt_bbox", "gt_class", "difficult"]}


def base_config(data):
    norm = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "is_scale": True}
    return {
        "metric": "VOC", "map_type": "11point", "num_classes": 1,
        "TrainDataset": dataset_yaml(data, "train_tiny.txt"),
        "EvalDataset": dataset_yaml(data, "val_tiny.txt"),
        "TestDataset": {"type": "ImageFolder", "anno_path": os.path.join(data, "label_list.txt")},
        "TrainReader": {
            "sample_transforms": [{"Decode": {}}, {"RandomFlip": {}}],
            "batch_transforms": [
                {"BatchRandomResize": {"target_size": [SIZE], "random_size": True, "random_interp": False,
                                       "keep_ratio": False}},
                {"NormalizeBox": {}}, {"PadBox": {"num_max_boxes": 40}}, {"BboxXYXY2XYWH": {}},
                {"NormalizeImage": norm}, {"Permute": {}},
                {"Gt2YoloTarget": {"anchor_masks": MASKS, "anchors": ANCHORS, "downsample_ratios": [32, 16, 8]}}],
            "batch_size": 2},
        "EvalReader": {"sample_transforms": [{"Decode": {}}, {"Resize": {"target_size": [SIZE, SIZE],
                                                                        "keep_ratio": False, "interp": 2}},
                                             {"NormalizeImage": norm}, {"Permute": {}}], "batch_size": 2},
        "epoch": 1,
        "reference_batch_size": 2,
        "LearningRate": {"base_lr": 0.002, "schedulers": [{"type": "CosineDecay", "max_epochs": 2},
                                                          {"type": "LinearWarmup", "start_factor": 0.1, "steps": 1}]},
        "OptimizerBuilder": {"optimizer": {"type": "Adam"}, "regularizer": {"type": "L2", "factor": 0.0005}},
        "obj_prior_prob": 0.01,
    }


def model_config(fpn_channels, scale=0.35):
    return {
        "architecture": "YOLOv3", "norm_type": "bn",
        "YOLOv3": {"backbone": "MobileNetV3", "neck": "PPYOLOTinyFPN", "yolo_head": "YOLOv3Head",
                   "post_process": "BBoxPostProcess"},
        "MobileNetV3": {"model_name": "small", "scale": scale, "with_extra_blocks": False, "extra_block_filters": [],
                        "feature_maps": [4, 9, 12]},
        "PPYOLOTinyFPN": {"detection_block_channels": list(fpn_channels), "spp": False, "drop_block": False},
        "YOLOv3Head": {"anchors": ANCHORS, "anchor_masks": MASKS, "loss": "YOLOv3Loss"},
        "YOLOv3Loss": {"ignore_thresh": 0.7, "downsample": [32, 16, 8], "label_smooth": False},
        "BBoxPostProcess": {"decode": {"name": "YOLOBox", "conf_thresh": 0.005, "downsample_ratio": 32,
                                       "clip_bbox": True},
                            "nms": {"name": "MultiClassNMS", "keep_top_k": 50, "score_threshold": 0.01,
                                    "nms_threshold": 0.45, "nms_top_k": 200}},
    }


DISTILL = [
    {"name": "l2_out0", "student": "yolo_head.yolo_output.0", "teacher": "yolo_head.yolo_output.0",
     "loss": "L2Loss", "weight": 0.1},
    {"name": "obj_out1", "student": "yolo_head.yolo_output.1", "teacher": "yolo_head.yolo_output.1",
     "loss": {"type": "YOLOv3DistillLoss", "num_anchors": 3}, "weight": 10},
    {"name": "neck2", "student": {"layer": "yolo_head.yolo_output.2", "io": "input", "idx": 0},
     "teacher": {"layer": "yolo_head.yolo_output.2", "io": "input", "idx": 0}, "loss": "L2Loss",
     "weight": 0.1, "align": {"type": "1x1conv"}},
    # FSP (Yim et al.) between the inputs of two head levels, through connectors (channels differ)
    {"name": "fsp12", "student": [{"layer": "yolo_head.yolo_output.1", "io": "input", "idx": 0},
                                  {"layer": "yolo_head.yolo_output.2", "io": "input", "idx": 0}],
     "teacher": [{"layer": "yolo_head.yolo_output.1", "io": "input", "idx": 0},
                 {"layer": "yolo_head.yolo_output.2", "io": "input", "idx": 0}],
     "loss": "FSPLoss", "weight": 0.1, "align": {"type": "1x1conv"}},
    # soft labels: the class term of the YOLOv3 loss alone (BCE against the teacher's sigmoid probabilities)
    {"name": "soft_cls0", "student": "yolo_head.yolo_output.0", "teacher": "yolo_head.yolo_output.0",
     "loss": {"type": "YOLOv3DistillLoss", "reg_weight": 0, "obj_weight": 0}, "weight": 1.0},
]


def make_tiny_det(root):
    """Configs (ppdet yaml, `_BASE_`, tags) for a teacher and a student on the tiny tree lists."""
    data = prepare_trees(root)
    paths = {"data": data}
    paths["base"] = write_yaml(os.path.join(root, "_base_", "tiny_trees.yml"), base_config(data))
    paths["teacher"] = write_yaml(os.path.join(root, "teacher.yml"),
                                  dict(model_config([24, 16, 16], scale=0.35), _BASE_=["_base_/tiny_trees.yml"]))
    paths["student"] = write_yaml(os.path.join(root, "student.yml"),
                                  dict(model_config([16, 8, 8], scale=0.25), _BASE_=["_base_/tiny_trees.yml"],
                                       distill=DISTILL))
    return paths


def write_yaml(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    return path
