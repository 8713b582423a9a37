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


# ----- PP-YOLOE (PPYOLOEDistill) -------------------------------------------------------------------------
PPYOLOE_NECK = [768, 384, 192]  # CustomCSPPAN.out_channels before width_mult (as in ppyoloe_plus_crn.yml)


def ppyoloe_reader():
    return {
        "sample_transforms": [{"Decode": {}}, {"RandomFlip": {}}],
        "batch_transforms": [
            {"BatchRandomResize": {"target_size": [SIZE], "random_size": True, "random_interp": False,
                                   "keep_ratio": False}},
            {"NormalizeImage": {"mean": [0., 0., 0.], "std": [1., 1., 1.], "norm_type": "none"}},
            {"Permute": {}}, {"PadGT": {}}],
        "batch_size": 2}


def ppyoloe_base(data):
    cfg = base_config(data)
    cfg.pop("obj_prior_prob")
    cfg["TrainReader"] = ppyoloe_reader()
    cfg["EvalReader"]["sample_transforms"][2] = {"NormalizeImage": {"mean": [0., 0., 0.], "std": [1., 1., 1.],
                                                                   "norm_type": "none"}}
    cfg["OptimizerBuilder"] = {"optimizer": {"type": "Momentum", "momentum": 0.9},
                               "regularizer": {"type": "L2", "factor": 0.0005}}
    return cfg


def ppyoloe_model(width, static_epochs=4, architecture="YOLOv3"):
    """A PP-YOLOE+-shaped detector (ppyoloe_plus_crn.yml at depth 0.33, the given width): CSPResNet,
    CustomCSPPAN, PPYOLOEHead (ATSS for the first `static_epochs` epochs, then the task-aligned assigner)."""
    return {
        "architecture": architecture, "norm_type": "bn", "depth_mult": 0.33, "width_mult": width,
        architecture: {"backbone": "CSPResNet", "neck": "CustomCSPPAN", "yolo_head": "PPYOLOEHead",
                       "post_process": None},
        "CSPResNet": {"layers": [3, 6, 6, 3], "channels": [64, 128, 256, 512, 1024], "return_idx": [1, 2, 3],
                      "use_large_stem": True, "use_alpha": True},
        "CustomCSPPAN": {"out_channels": list(PPYOLOE_NECK), "stage_num": 1, "block_num": 3, "act": "swish",
                         "spp": True},
        "PPYOLOEHead": {"fpn_strides": [32, 16, 8], "grid_cell_scale": 5.0, "grid_cell_offset": 0.5,
                        "static_assigner_epoch": static_epochs, "use_varifocal_loss": True,
                        "loss_weight": {"class": 1.0, "iou": 2.5, "dfl": 0.5},
                        "static_assigner": {"name": "ATSSAssigner", "topk": 4},  # 4 cells on the 2x2 level
                        "assigner": {"name": "TaskAlignedAssigner", "topk": 13, "alpha": 1.0, "beta": 6.0},
                        "nms": {"name": "MultiClassNMS", "nms_top_k": 100, "keep_top_k": 20,
                                "score_threshold": 0.0, "nms_threshold": 0.7}},
    }


def make_ppyoloe(root, static_epochs=4):
    """PP-YOLOE+ teacher (width 0.125) and student (0.0625) configs on the tiny tree lists, teacher weights."""
    from slim.apps import launch
    data = prepare_trees(root)
    paths = {"data": data, "root": root}
    write_yaml(os.path.join(root, "_base_", "ppyoloe_trees.yml"), ppyoloe_base(data))
    paths["teacher"] = write_yaml(os.path.join(root, "ppyoloe_teacher.yml"),
                                  dict(ppyoloe_model(0.125, static_epochs, "PPYOLOE"),
                                       _BASE_=["_base_/ppyoloe_trees.yml"]))
    paths["student"] = write_yaml(os.path.join(root, "ppyoloe_student.yml"),
                                  dict(ppyoloe_model(0.0625, static_epochs), _BASE_=["_base_/ppyoloe_trees.yml"]))
    task, cfg = launch.load_task_config(paths["teacher"])
    paddle.seed(1)
    teacher = jitter_ppyoloe_head(task.build_model(cfg), seed=1)
    paths["teacher_weights"] = os.path.join(root, "ppyoloe_teacher.pdparams")
    paddle.save(teacher.state_dict(), paths["teacher_weights"])
    return paths


def jitter_ppyoloe_head(model, seed=0, scale=0.05):
    """PPYOLOEHead starts its class and box predictors at weight 0 (every cell predicts the same): random
    weights instead, so that the teacher's and the student's outputs differ from cell to cell."""
    import numpy as np
    rng = np.random.default_rng(seed)
    head = model.yolo_head
    for conv in list(head.pred_cls) + list(head.pred_reg):
        conv.weight.set_value(rng.normal(0, scale, conv.weight.shape).astype("float32"))
        conv.bias.set_value((conv.bias.numpy() + rng.normal(0, 0.5, conv.bias.shape)).astype("float32"))
    return model
