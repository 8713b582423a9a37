"""PaddleDetection's `slim_method: PPYOLOEDistill` (DistillPPYOLOELoss) on tiny PP-YOLOE+-shaped detectors at
64 px: the logit terms against ppdet's own DistillPPYOLOELoss fed by ppdet's own PP-YOLOE heads (static and
task-aligned assignment), the feature terms against NumPy, and 2-iteration runs of
`tools/train.py -c student.yml --slim_config distill.yml` (MGD's generator trains and is restored on resume),
then `tools/eval.py` on the checkpoint."""
import os
import types

import numpy as np
import paddle
import pytest

from slim.apps import launch
from slim.distill.losses import build_loss
from slim.engine.checkpoint import read_checkpoint
from slim.tasks.det import distill_losses  # noqa: F401  (registers the losses)
from tests.helpers.cli import run_tool
from tests.helpers.det_slim_fixtures import jitter_ppyoloe_head, make_ppyoloe, slim_yaml

WIDTHS = {"teacher_width_mult": 0.125, "student_width_mult": 0.0625}


@pytest.fixture(scope="module")
def pp(tmp_path_factory):
    return make_ppyoloe(str(tmp_path_factory.mktemp("det_ppyoloe")), static_epochs=1)


def distill_yml(pp, name, **section):
    body = dict(WIDTHS, **section)
    return slim_yaml(pp["root"], name, pp["teacher"], pp["teacher_weights"], slim_method="PPYOLOEDistill",
                     distill_loss="DistillPPYOLOELoss", for_distill=True, DistillPPYOLOELoss=body)


def read(path):
    with open(path) as f:
        return f.read()


# ----- NumPy references --------------------------------------------------------------------------------
def norm_ref(x):
    """ppdet's feature_norm: each channel standardised over N, H, W (std with ddof 1, + 1e-6)."""
    x = x.astype(np.float64)
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    std = x.std(axis=(0, 2, 3), ddof=1, keepdims=True)
    return (x - mean) / (std + 1e-6)


def test_pkd_cwd_mimic_match_numpy():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(2, 6, 5, 4)).astype("float32") * 3 + 1
    t = rng.normal(size=(2, 6, 5, 4)).astype("float32")
    st, tt = paddle.to_tensor(s), paddle.to_tensor(t)
    pkd = build_loss({"type": "PPDetFeatureLoss", "kind": "pkd", "student_channels": 6, "teacher_channels": 6})
    np.testing.assert_allclose(float(pkd(st, tt)), ((norm_ref(s) - norm_ref(t)) ** 2).mean() / 2, rtol=1e-5)
    mimic = build_loss({"type": "PPDetFeatureLoss", "kind": "mimic", "student_channels": 6, "teacher_channels": 6})
    np.testing.assert_allclose(float(mimic(st, tt)), ((norm_ref(s) - norm_ref(t)) ** 2).mean(), rtol=1e-5)
    cwd = build_loss({"type": "PPDetFeatureLoss", "kind": "cwd", "student_channels": 6, "teacher_channels": 6})
    ns, nt = norm_ref(s).reshape(12, -1), norm_ref(t).reshape(12, -1)
    ps = np.exp(ns) / np.exp(ns).sum(1, keepdims=True)
    pt = np.exp(nt) / np.exp(nt).sum(1, keepdims=True)
    ref = (pt * (np.log(1e-5 + pt) - np.log(1e-5 + ps))).sum() / (6 * 2)
    np.testing.assert_allclose(float(cwd(st, tt)), ref, rtol=1e-4)
    # MGD's generator (and CWD / mimic's align convolutions when channels differ) are trainable parameters
    mgd = build_loss({"type": "PPDetFeatureLoss", "kind": "mgd", "student_channels": 4, "teacher_channels": 6})
    assert sum(int(p.size) for p in mgd.parameters() if not p.stop_gradient) == 4 * 6 + 2 * (6 * 6 * 9 + 6)


# ----- the logit terms against ppdet's own DistillPPYOLOELoss -------------------------------------------------
def ppdet_logits(pp, epoch, ld):
    """ppdet's PPYOLOEDistillModel step on the tiny pair (both models in train mode, as ppdet's trainer leaves
    them): its logits_loss, and the raw head maps and batch our PPYOLOELogitsLoss gets."""
    from ppdet.slim.distill_loss import DistillPPYOLOELoss
    task, cfg = launch.load_task_config(pp["student"])
    slim = task.slim_config(cfg, distill_yml(pp, f"logits_{epoch}_{ld}.yml", logits_ld_distill=ld,
                                             feat_distill=False))
    teacher_cfg = task.prepare_teacher_config(slim.student_cfg, slim.teacher_cfg)
    paddle.seed(0)
    student, teacher = jitter_ppyoloe_head(task.build_model(slim.student_cfg)), task.build_model(teacher_cfg)
    teacher.set_state_dict(paddle.load(slim.weights))
    maps = {}
    for side, model in (("s", student), ("t", teacher)):
        head = model.yolo_head
        head.for_distill, head.distill_pairs = True, {}
        for i in range(3):
            for kind in ("cls", "reg"):
                getattr(head, f"pred_{kind}")[i].register_forward_post_hook(
                    lambda layer, inp, out, key=(side, kind, i): maps.__setitem__(key, out))
        model.train()
    dataset = task.build_dataset(slim.student_cfg, "train")
    batch = task.collate_fn("train")([dataset[i] for i in (0, 1)])
    task.set_epoch(epoch)
    (inputs,), _ = task.model_inputs(batch)
    with paddle.no_grad():
        teacher(dict(inputs))
    t_head, s_head = teacher.yolo_head, student.yolo_head
    if hasattr(t_head, "assigned_labels"):  # PPYOLOEDistillModel.forward: the teacher's assignment
        for key in ("assigned_labels", "assigned_bboxes", "assigned_scores", "mask_positive"):
            setattr(s_head, key, getattr(t_head, key))
            delattr(t_head, key)
    student(dict(inputs))
    args = dict(slim.pairs[0]["loss"])
    ppdet_loss = DistillPPYOLOELoss(loss_weight={"logits": 1.0, "feat": 0.0}, logits_ld_distill=ld,
                                    logits_ld_params={"weight": args["ld_weight"], "T": args["ld_T"]},
                                    feat_distill=False)
    expected, _ = ppdet_loss(types.SimpleNamespace(yolo_head=t_head),
                             types.SimpleNamespace(yolo_head=s_head, inputs=inputs))
    ours = build_loss(args)
    side = lambda k: [maps[(k, "cls", i)] for i in range(3)] + [maps[(k, "reg", i)] for i in range(3)]
    return float(expected), float(ours(side("s"), side("t"), label=task.distill_label(batch))), slim


@pytest.mark.parametrize("epoch, ld", [(0, False), (1, True)])
def test_logits_loss_matches_ppdet(pp, epoch, ld):
    """epoch 0: ATSS (static) assignment of the student; epoch 1: the teacher's task-aligned assignment."""
    expected, ours, slim = ppdet_logits(pp, epoch, ld)
    assert expected > 0
    np.testing.assert_allclose(ours, expected, rtol=1e-4)
    assert slim.pairs[0]["weight"] == 0.125 * 4.0 and slim.student_cfg["det_loss_scale"] == 0.125


# ----- the command line ------------------------------------------------------------------------------------
def generator(ckpt):
    return {k: v for k, v in read_checkpoint(ckpt)["connectors"].items() if ".generation." in k}


def test_train_mgd_resume_and_eval(pp):
    slim_file = distill_yml(pp, "distill_mgd.yml", feat_distiller="mgd", logits_ld_distill=True)
    save = os.path.join(pp["root"], "run_mgd")
    common = ("train", "-c", pp["student"], "--slim_config", slim_file, "--iters", 3, "--save_interval", 1,
              "--log_iters", 1, "--seed", 3)
    assert run_tool(*common, "--save_dir", save) == 0
    log = read(os.path.join(save, "record.txt"))
    for term in ("logits_loss: ", "feat_loss_0: ", "feat_loss_2: ", "det_loss: "):
        assert term in log, log
    assert "mgd on the neck outputs (student channels [48, 24, 12], teacher [96, 48, 24])" in log
    first, last = generator(os.path.join(save, "iter_1")), generator(os.path.join(save, "iter_3"))
    assert len(first) == 3 * 4  # 3 levels x (2 convolutions x weight, bias)
    assert any(not np.allclose(first[k], last[k]) for k in first)  # the generator trains
    # resumed from iter_1, the run restores the generator and ends where the uninterrupted one did
    resumed = os.path.join(pp["root"], "run_mgd_resumed")
    import shutil
    shutil.copytree(os.path.join(save, "iter_1"), os.path.join(resumed, "iter_1"))
    assert run_tool(*common, "--save_dir", resumed, "--resume_model", os.path.join(resumed, "iter_1")) == 0
    again = generator(os.path.join(resumed, "iter_3"))
    for k in last:
        np.testing.assert_allclose(again[k], last[k], rtol=1e-4, atol=1e-6)
    assert run_tool("eval", "-c", pp["student"], "-o", f"weights={save}/iter_3/model.pdparams") == 0


def test_train_fgd_on_backbone_and_errors(pp, capsys):
    slim_file = distill_yml(pp, "distill_fgd.yml", feat_distill_place="backbone_feats",
                            feat_out_channels=[256, 512, 1024])
    save = os.path.join(pp["root"], "run_fgd")
    assert run_tool("train", "-c", pp["student"], "--slim_config", slim_file, "--iters", 2, "--save_interval", 2,
                    "--log_iters", 1, "--save_dir", save) == 0
    log = read(os.path.join(save, "record.txt"))
    assert "fgd on the backbone outputs (student channels [16, 32, 64], teacher [32, 64, 128])" in log
    assert "detection loss x0.125" in log
    bad = distill_yml(pp, "distill_bad.yml", feat_distiller="at")
    assert run_tool("train", "-c", pp["student"], "--slim_config", bad, "--iters", 1) == 2
    assert "feat_distiller must be one of cwd, fgd, pkd, mgd, mimic" in capsys.readouterr().err
