"""Tiny PaddleDetection distillation setups for `--slim_config`: a GFL pair (64 px, CSPResNet backbones,
0.1M and 0.24M parameters, three FPN levels) with slim configs in PaddleDetection's shape (`_BASE_` the
teacher config, `pretrain_weights` = the teacher's weights, `slim: Distill`, `slim_method`, `distill_loss`)."""
import copy
import os

import paddle

from .det_fixtures import SIZE, base_config, prepare_trees, write_yaml

NORM = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "is_scale": True}
STRIDES = [8, 16, 32]


def gfl_reader(vlr=False):
    target = {"downsample_ratios": STRIDES, "grid_cell_scale": 8}
    if vlr:
        target["compute_vlr_region"] = True
    return {
        "sample_transforms": [{"Decode": {}}, {"RandomFlip": {}},
                              {"Resize": {"target_size": [SIZE, SIZE], "keep_ratio": False, "interp": 1}},
                              {"NormalizeImage": NORM}, {"Permute": {}}],
        "batch_transforms": [{"PadBatch": {"pad_to_stride": 32}}, {"Gt2GFLTarget": target}],
        "batch_size": 2}


def gfl_base(data, vlr=False):
    cfg = base_config(data)
    cfg.pop("obj_prior_prob")
    cfg["TrainReader"] = gfl_reader(vlr)
    return cfg


def gfl_model(channels, scale, head="GFLHead", ld=False):
    head_cfg = {
        "conv_feat": {"name": "FCOSFeat", "feat_in": channels, "feat_out": channels, "num_convs": 1,
                      "norm_type": "gn", "use_dcn": False},
        "fpn_stride": STRIDES, "prior_prob": 0.01, "reg_max": 7, "feat_in_chan": channels,
        "loss_class": {"name": "QualityFocalLoss", "use_sigmoid": True, "beta": 2.0, "loss_weight": 1.0},
        "loss_dfl": {"name": "DistributionFocalLoss", "loss_weight": 0.25},
        "loss_bbox": {"name": "GIoULoss", "loss_weight": 2.0},
        "nms": {"name": "MultiClassNMS", "nms_top_k": 100, "keep_top_k": 20, "score_threshold": 0.0,
                "nms_threshold": 0.6},
    }
    if ld:
        head_cfg.update({
            "loss_ld": {"name": "KnowledgeDistillationKLDivLoss", "loss_weight": 0.25, "T": 10},
            "loss_ld_vlr": {"name": "KnowledgeDistillationKLDivLoss", "loss_weight": 0.25, "T": 10},
            "loss_kd": {"name": "KnowledgeDistillationKLDivLoss", "loss_weight": 10, "T": 2}})
    return {
        "architecture": "GFL",
        "GFL": {"backbone": "CSPResNet", "neck": "FPN", "head": head},
        "CSPResNet": {"layers": [1, 1, 1, 1], "channels": [64, 128, 256, 512, 1024], "return_idx": [1, 2, 3],
                      "use_large_stem": True, "width_mult": scale, "depth_mult": 0.33},
        "FPN": {"out_channel": channels, "spatial_scales": [0.125, 0.0625, 0.03125], "extra_stage": 0,
                "has_extra_convs": False, "use_c5": False},
        head: head_cfg,
    }


def save_random_weights(task, cfg, path):
    """A teacher's weights file (a freshly initialised model: the tests check the computation, not accuracy)."""
    paddle.seed(1)
    model = task.build_model(cfg)
    paddle.save(model.state_dict(), path)
    return path


def make_gfl(root):
    """Teacher and student GFL configs (ppdet yaml with `_BASE_`), the LD student (LDGFLHead), teacher weights."""
    from slim.apps import launch
    data = prepare_trees(root)
    paths = {"data": data, "root": root}
    write_yaml(os.path.join(root, "_base_", "gfl_trees.yml"), gfl_base(data))
    write_yaml(os.path.join(root, "_base_", "gfl_trees_vlr.yml"), gfl_base(data, vlr=True))
    paths["teacher"] = write_yaml(os.path.join(root, "gfl_teacher.yml"),
                                  dict(gfl_model(32, 0.125), _BASE_=["_base_/gfl_trees.yml"]))
    paths["student"] = write_yaml(os.path.join(root, "gfl_student.yml"),
                                  dict(gfl_model(32, 0.0625), _BASE_=["_base_/gfl_trees.yml"]))
    paths["ld_student"] = write_yaml(os.path.join(root, "gfl_ld_student.yml"),
                                     dict(gfl_model(32, 0.0625, head="LDGFLHead", ld=True),
                                          _BASE_=["_base_/gfl_trees_vlr.yml"]))
    task, cfg = launch.load_task_config(paths["teacher"])
    paths["teacher_weights"] = save_random_weights(task, cfg, os.path.join(root, "gfl_teacher.pdparams"))
    return paths


def slim_yaml(root, name, teacher, weights, **sections):
    """A slim config in PaddleDetection's shape: `_BASE_` the teacher's config, its weights, the method."""
    body = {"_BASE_": [os.path.relpath(teacher, root)], "pretrain_weights": weights, "slim": "Distill"}
    body.update(copy.deepcopy(sections))
    return write_yaml(os.path.join(root, name), body)
