"""PaddleDetection's `--slim_config` distillation (slim/tasks/det/slim_config.py): each slim_method on tiny
configs at 64 px, one step's distillation terms against independent NumPy computations, 2-iteration runs of
the command line; the YOLOv3 default pairs; a teacher whose dataset is not on this machine."""
import os

import numpy as np
import paddle
import pytest

from slim.distill.distiller import Distiller
from slim.distill.errors import ConfigError, ShapeMismatchError
from slim.distill.losses import build_loss
from slim.distill.pairs import parse_pairs
from slim.apps import launch
from slim.tasks.det import distill_losses  # noqa: F401  (registers FGDFeatureLoss, LDLoss)
from tests.helpers.cli import run_tool
from tests.helpers.det_fixtures import make_tiny_det, model_config, write_yaml
from tests.helpers.det_slim_fixtures import make_gfl, save_random_weights, slim_yaml


@pytest.fixture(scope="module")
def dets(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("det_slim"))
    paths = make_gfl(root)
    yolo = make_tiny_det(root)
    paths["yolo_teacher"] = yolo["teacher"]
    # the student of ppdet's form: no `distill:` pairs of its own
    paths["yolo_student"] = write_yaml(os.path.join(root, "yolo_student.yml"),
                                       dict(model_config([16, 8, 8], scale=0.25), _BASE_=["_base_/tiny_trees.yml"]))
    task, cfg = launch.load_task_config(yolo["teacher"])
    paths["yolo_weights"] = save_random_weights(task, cfg, os.path.join(root, "yolo_teacher.pdparams"))
    return paths


def read(path):
    with open(path) as f:
        return f.read()


def one_step(student_yml, slim_path):
    """One distiller forward as the trainer runs it: (output, batch, task, distiller)."""
    task, cfg = launch.load_task_config(student_yml)
    slim_cfg = task.slim_config(cfg, slim_path)
    cfg = slim_cfg.student_cfg
    teacher_cfg = task.prepare_teacher_config(cfg, slim_cfg.teacher_cfg)
    paddle.seed(0)
    student, teacher = task.build_model(cfg), task.build_model(teacher_cfg)
    teacher.set_state_dict(paddle.load(slim_cfg.weights))
    task.prepare_pair(student, teacher, cfg, log=lambda line: None)
    distiller = Distiller(student, teacher, parse_pairs(slim_cfg.pairs))
    dataset = task.build_dataset(cfg, "train")
    batch = task.collate_fn("train")([dataset[i] for i in range(2)])
    (inputs,), _ = task.model_inputs(batch)
    label = task.distill_label(batch)
    distiller.build(inputs, label=label)
    distiller.train()
    return distiller(inputs, label=label), batch, task, distiller


def np_(x):
    return x.numpy().astype(np.float64)


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(x, axis=-1):
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


# ----- references --------------------------------------------------------------------------------------
def cwd_ref(s, t, tau, normalize=False, align=None):
    """ppdet 2.6's CWDFeatureLoss written out: the student through the 1x1 align (weight, bias) when given, each
    channel standardised over N, H, W when normalize (std ddof 1, + 1e-6), softmax over the positions of each
    channel at tau, sum of p_t (log(1e-5 + p_t) - log(1e-5 + p_s)) over everything / (student's C * N); no tau^2."""
    n, c = s.shape[:2]
    if align is not None:
        s = np.einsum("oc,nchw->nohw", align[0], s) + align[1].reshape(1, -1, 1, 1)
    if normalize:
        s, t = [(x - x.mean(axis=(0, 2, 3), keepdims=True)) / (x.std(axis=(0, 2, 3), ddof=1, keepdims=True) + 1e-6)
                for x in (s, t)]
    ps = softmax(s.reshape(-1, s.shape[2] * s.shape[3]) / tau)
    pt = softmax(t.reshape(-1, t.shape[2] * t.shape[3]) / tau)
    return (pt * (np.log(1e-5 + pt) - np.log(1e-5 + ps))).sum() / (c * n)


def ppdet_cwd(s, t, loss_fn=None, **args):
    """ppdet's own CWDFeatureLoss(**args) on (s, t), its align convolution set to loss_fn's."""
    from ppdet.slim.distill_loss import CWDFeatureLoss
    ref = CWDFeatureLoss(**args)
    if ref.align is not None:
        ref.align.set_state_dict(loss_fn.loss.align.state_dict())
    return float(ref(paddle.to_tensor(s, dtype="float32"), paddle.to_tensor(t, dtype="float32")))


def kl_rows(pred, target, T):
    """ppdet's KnowledgeDistillationKLDivLoss per row: T^2 * mean over the bins of KL."""
    pt = softmax(target / T)
    return T * T * (pt * (np.log(pt) - log_softmax(pred / T))).mean(axis=1)


def ld_ref(s, t, label, term, T, w):
    n_lv = len(s) // 2
    total, start = 0.0, 0
    for lv in range(n_lv):
        cls = s[lv].transpose(0, 2, 3, 1).reshape(-1, s[lv].shape[1])
        reg = s[n_lv + lv].transpose(0, 2, 3, 1).reshape(-1, s[n_lv + lv].shape[1])
        t_cls = t[lv].transpose(0, 2, 3, 1).reshape(-1, t[lv].shape[1])
        t_reg = t[n_lv + lv].transpose(0, 2, 3, 1).reshape(-1, t[n_lv + lv].shape[1])
        end = start + s[lv].shape[2] * s[lv].shape[3]
        bins = reg.shape[1] // 4
        labels = label["labels"][:, start:end].reshape(-1)
        pos = np.where((labels >= 0) & (labels < cls.shape[1]))[0]
        if term == "ld" and len(pos):
            weight = np.repeat((1 / (1 + np.exp(-cls[pos]))).max(axis=1), 4)
            total += (weight * kl_rows(reg[pos].reshape(-1, bins), t_reg[pos].reshape(-1, bins), T)).sum() / 4
        elif term == "kd" and len(pos):
            lw = label["label_weights"][:, start:end].reshape(-1)[pos]
            total += (lw * kl_rows(cls[pos], t_cls[pos], T)).sum() / len(pos)
        elif term == "ld_vlr":
            vlr = label["vlr_regions"][:, start:end].reshape(-1)
            keep = np.where(vlr > 0)[0]
            if len(keep):
                total += (np.repeat(vlr[keep], 4) * kl_rows(reg[keep].reshape(-1, bins),
                                                            t_reg[keep].reshape(-1, bins), T)).sum() / 16
        start = end
    return w * total


def fgd_ref(s, t, boxes, im_shape, fgd, temp, alpha, beta, gamma, lam):
    """FGD (Yang et al. 2022) written out: masks, attention, focal, attention and global (GcBlock) terms."""
    n, c, h, w = s.shape

    def attention(x):
        a = np.abs(x)
        spatial = softmax(a.mean(axis=1).reshape(n, -1) / temp).reshape(n, h, w) * h * w
        channel = softmax(a.mean(axis=(2, 3)) / temp) * c
        return spatial, channel

    sp_t, ch_t = attention(t)
    sp_s, ch_s = attention(s)
    fg, bg = np.zeros((n, h, w)), np.ones((n, h, w))
    for i in range(n):
        for box in boxes[i]:
            if box.sum() <= 0:
                continue
            x1, y1 = box[0] / im_shape[i][1] * w, box[1] / im_shape[i][0] * h
            x2, y2 = box[2] / im_shape[i][1] * w, box[3] / im_shape[i][0] * h
            w0, w1 = max(int(np.floor(np.float32(x1))), 0), int(np.ceil(np.float32(x2)))
            h0, h1 = max(int(np.floor(np.float32(y1))), 0), int(np.ceil(np.float32(y2)))
            area = 1.0 / ((h1 + 1 - h0) * (w1 + 1 - w0))
            fg[i, h0:h1 + 1, w0:w1 + 1] = np.maximum(fg[i, h0:h1 + 1, w0:w1 + 1], area)
        bg[i] = (fg[i] <= 0).astype(float)
        if bg[i].sum():
            bg[i] /= bg[i].sum()
    weight = sp_t[:, None] * ch_t[:, :, None, None]
    diff2 = (s - t) ** 2 * weight
    fg_loss = (diff2 * fg[:, None]).sum() / n
    bg_loss = (diff2 * bg[:, None]).sum() / n
    mask_loss = np.abs(ch_s - ch_t).sum() / n + np.abs(sp_s - sp_t).sum() / n

    def conv1x1(x, conv):
        wt, b = np_(conv.weight)[:, :, 0, 0], np_(conv.bias)
        return np.einsum("oc,nc...->no...", wt, x) + b.reshape([-1] + [1] * (x.ndim - 2))

    def block(ctx, seq):  # (n, c) -> (n, c): conv1x1, LayerNorm([c/2, 1, 1]), ReLU, conv1x1
        y = conv1x1(ctx, seq[0])
        mu, var = y.mean(axis=1, keepdims=True), y.var(axis=1, keepdims=True)
        y = (y - mu) / np.sqrt(var + 1e-5) * np_(seq[1].weight).reshape(1, -1) + np_(seq[1].bias).reshape(1, -1)
        return conv1x1(np.maximum(y, 0), seq[3])

    def gc(x, conv_mask, seq):
        mask = softmax(conv1x1(x, conv_mask).reshape(n, h * w))
        context = np.einsum("ncp,np->nc", x.reshape(n, c, h * w), mask)
        return x + block(context, seq)[:, :, None, None]

    rela = ((gc(s, fgd.conv_mask_s, fgd.stu_conv_block) - gc(t, fgd.conv_mask_t, fgd.tea_conv_block)) ** 2).sum() / n
    return alpha * fg_loss + beta * bg_loss + gamma * mask_loss + lam * rela


# ----- the losses alone --------------------------------------------------------------------------------
def test_fgd_loss_matches_numpy_with_trained_looking_gcblocks():
    rng = np.random.RandomState(0)
    n, c, h, w = 2, 8, 6, 5
    s, t = rng.randn(n, c, h, w).astype("float32"), rng.randn(n, c, h, w).astype("float32")
    boxes = np.zeros((n, 3, 4), "float32")
    boxes[0, 0] = [3.0, 5.5, 20.2, 30.0]
    boxes[0, 1] = [10.0, 10.0, 47.0, 40.0]
    boxes[1, 0] = [0.0, 0.0, 12.0, 9.9]  # image 1: one box and padding
    im_shape = np.array([[48, 40], [48, 40]], "float32")
    args = dict(temp=0.5, alpha_fgd=0.001, beta_fgd=0.0005, gamma_fgd=0.0005, lambda_fgd=0.000005)
    loss = build_loss(dict(args, type="FGDFeatureLoss", channels=c))
    for p in loss.parameters():  # the GcBlock's last convolutions start at 0: give every weight a value
        p.set_value(paddle.to_tensor(rng.randn(*p.shape).astype("float32") * 0.3))
    got = float(loss(paddle.to_tensor(s), paddle.to_tensor(t),
                     label={"gt_bbox": paddle.to_tensor(boxes), "im_shape": paddle.to_tensor(im_shape)}))
    want = fgd_ref(s.astype(float), t.astype(float), boxes, im_shape, loss.fgd, 0.5, 0.001, 0.0005, 0.0005, 0.000005)
    np.testing.assert_allclose(got, want, rtol=2e-4)
    with pytest.raises(ConfigError, match="ground-truth boxes"):
        loss(paddle.to_tensor(s), paddle.to_tensor(t))


@pytest.mark.parametrize("term,T,weight", [("ld", 10, 0.25), ("ld_vlr", 10, 0.25), ("kd", 2, 10.0)])
def test_ld_terms_match_numpy(term, T, weight):
    rng = np.random.RandomState(1)
    n, classes, bins, sizes = 2, 3, 8, [(4, 4), (2, 2)]
    s = [rng.randn(n, classes, *hw) for hw in sizes] + [rng.randn(n, 4 * bins, *hw) for hw in sizes]
    t = [rng.randn(*x.shape) * 2 for x in s]
    cells = sum(a * b for a, b in sizes)
    labels = rng.randint(0, classes + 1, size=(n, cells))  # `classes` is background
    label = {"labels": labels, "label_weights": rng.rand(n, cells), "vlr_regions": rng.rand(n, cells) * (
        rng.rand(n, cells) > 0.5)}
    loss = build_loss({"type": "LDLoss", "term": term, "num_levels": 2, "T": T, "loss_weight": weight})
    got = float(loss([paddle.to_tensor(x, dtype="float32") for x in s],
                     [paddle.to_tensor(x, dtype="float32") for x in t],
                     label={k: paddle.to_tensor(v, dtype="int32" if k == "labels" else "float32")
                            for k, v in label.items()}))
    f32 = {k: (v.astype(np.float32).astype(float) if k != "labels" else v) for k, v in label.items()}
    want = ld_ref([x.astype(np.float32).astype(float) for x in s], [x.astype(np.float32).astype(float) for x in t],
                  f32, term, T, weight)
    np.testing.assert_allclose(got, want, rtol=1e-4)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("tau", [1.0, 2.0])
@pytest.mark.parametrize("channels", [(6, 6), (4, 6)])
def test_ppdet_cwd_loss_is_ppdets_cwd_feature_loss(normalize, tau, channels):
    rng = np.random.RandomState(2)
    s = (rng.randn(2, channels[0], 5, 4) * 3 + 1).astype("float32")
    t = (rng.randn(2, channels[1], 5, 4) * 2).astype("float32")
    loss = build_loss({"type": "PPDetCWDFeatureLoss", "student_channels": channels[0],
                       "teacher_channels": channels[1], "normalize": normalize, "tau": tau})
    got = float(loss(paddle.to_tensor(s), paddle.to_tensor(t)))
    align = None
    if channels[0] != channels[1]:  # ppdet's 1x1 align convolution, trained with the student here
        conv = loss.loss.align
        assert not conv.weight.stop_gradient and list(conv.weight.shape) == [channels[1], channels[0], 1, 1]
        align = (np_(conv.weight)[:, :, 0, 0], np_(conv.bias))
    else:
        assert loss.loss.align is None and not loss.parameters()
    want = cwd_ref(s.astype(float), t.astype(float), tau, normalize, align)
    np.testing.assert_allclose(got, want, rtol=1e-4)
    args = dict(student_channels=channels[0], teacher_channels=channels[1], normalize=normalize, tau=tau)
    np.testing.assert_allclose(got, ppdet_cwd(s, t, loss, **args), rtol=1e-6)


def test_ppdet_cwd_loss_explains_maps_it_cannot_compare():
    s, t = paddle.ones([2, 4, 5, 4]), paddle.ones([2, 6, 5, 4])
    with pytest.raises(ShapeMismatchError, match="set student_channels: 4 and teacher_channels: 6"):
        build_loss({"type": "PPDetCWDFeatureLoss"})(s, t)
    with pytest.raises(ShapeMismatchError, match="built for student_channels 8 and teacher_channels 6"):
        build_loss({"type": "PPDetCWDFeatureLoss", "student_channels": 8, "teacher_channels": 6})(s, t)
    with pytest.raises(ShapeMismatchError, match="equal H, W"):
        build_loss({"type": "PPDetCWDFeatureLoss"})(s, paddle.ones([2, 4, 4, 4]))
    with pytest.raises(ConfigError, match="both student_channels and teacher_channels"):
        build_loss({"type": "PPDetCWDFeatureLoss", "student_channels": 4})


# ----- each slim_method: one step against a reference, and the command line ---------------------------------
def yolo_slim(dets, name, **sections):
    return slim_yaml(dets["root"], name, dets["yolo_teacher"], dets["yolo_weights"], **sections)


def test_default_method_is_ppdet_distill_yolov3_loss(dets):
    from ppdet.slim.distill_loss import DistillYOLOv3Loss
    slim_file = yolo_slim(dets, "yolo_distill.yml", distill_loss="DistillYOLOv3Loss",
                          DistillYOLOv3Loss={"weight": 1000}, TrainReader={"batch_size": 8},
                          LearningRate={"base_lr": 0.5})
    out, _, _, _ = one_step(dets["yolo_student"], slim_file)
    ppdet_loss, parts = DistillYOLOv3Loss(weight=1000), []
    for i in range(3):  # ppdet's split of a YOLOv3 map, as in its YOLOv3Loss
        maps = []
        for feats in (out.student_features, out.teacher_features):
            p = feats[f"distill_yolov3_{i}"][0]
            b, _, h, w = p.shape
            p = p.reshape((b, 3, -1, h, w)).transpose((0, 1, 3, 4, 2))
            maps.append([p[..., 0:1], p[..., 1:2], p[..., 2:3], p[..., 3:4], p[..., 4:5], p[..., 5:]])
        (sx, sy, sw, sh, so, sc), (tx, ty, tw, th, to, tc) = maps
        parts.append(ppdet_loss.obj_weighted_reg(sx, sy, sw, sh, tx, ty, tw, th, to)
                     + ppdet_loss.obj_weighted_cls(sc, tc, to) + ppdet_loss.obj_loss(so, to))
    np.testing.assert_allclose(float(out.loss), 1000 * float(paddle.add_n(parts)), rtol=1e-5)

    save = os.path.join(dets["root"], "run_yolo")
    assert run_tool("train", "-c", dets["yolo_student"], "--slim_config", slim_file, "--iters", 2, "--save_interval", 2,
                    "--log_iters", 1, "--save_dir", save) == 0
    log = read(os.path.join(save, "record.txt"))
    for text in ("DistillYOLOv3Loss on 3 YOLOv3 output levels, weight 1000 each", "distill_yolov3_2: ",
                 "batch 2 x 1 process(es)", "teacher weights", "not used (the student config -c gives them): "
                 "TrainDataset, EvalDataset, TestDataset, TrainReader, EvalReader, LearningRate"):
        assert text in log, text
    state = paddle.load(os.path.join(save, "iter_2", "model.pdparams"))
    task, cfg = launch.load_task_config(dets["yolo_student"])
    assert sorted(state) == sorted(task.build_model(cfg).state_dict())  # the student alone
    assert run_tool("eval", "-c", dets["yolo_student"], "-o", f"weights={save}/iter_2/model.pdparams") == 0


def test_fgd_on_yolov3_necks_with_pixel_boxes(dets):
    slim_file = yolo_slim(dets, "yolo_fgd.yml", slim_method="FGD", distill_loss="FGDFeatureLoss",
                     distill_loss_name=["neck_f_0", "neck_f_1", "neck_f_2"],
                     FGDFeatureLoss={"student_channels": [16, 8, 8], "teacher_channels": [24, 16, 16], "temp": 0.5,
                                     "alpha_fgd": 0.001, "beta_fgd": 0.0005, "gamma_fgd": 0.0005,
                                     "lambda_fgd": 0.000005})
    out, batch, task, distiller = one_step(dets["yolo_student"], slim_file)
    label = task.distill_label(batch)
    # the YOLOv3 reader's normalised centre boxes, back in pixels of the 64 px input
    norm, pix = batch["gt_bbox"].numpy(), label["gt_bbox"].numpy()
    real = np.abs(norm).sum(-1) > 0
    hw = batch["im_shape"].numpy()
    np.testing.assert_allclose(pix[..., 0][real], ((norm[..., 0] - norm[..., 2] / 2) * hw[:, 1:2])[real], rtol=1e-5)
    np.testing.assert_allclose(pix[..., 3][real], ((norm[..., 1] + norm[..., 3] / 2) * hw[:, 0:1])[real], rtol=1e-5)
    assert not np.abs(pix[~real]).any()
    for i, fn in enumerate(distiller.loss_fns):
        name = f"neck_f_{i}"
        s, t = np_(out.student_features[name][0]), np_(out.teacher_features[name][0])
        assert s.shape == t.shape  # after the 1x1 connector
        want = fgd_ref(s, t, pix, hw, fn.fgd, 0.5, 0.001, 0.0005, 0.0005, 0.000005)
        np.testing.assert_allclose(float(out.losses[name]), want, rtol=5e-4)
    save = os.path.join(dets["root"], "run_fgd")
    assert run_tool("distill_train", "-c", dets["yolo_student"], "--slim_config", slim_file, "--iters", 2,
                    "--save_interval", 2, "--log_iters", 1, "--save_dir", save) == 0
    assert "neck_f_2: " in read(os.path.join(save, "record.txt"))


def test_cwd_on_gfl_class_maps_and_necks(dets):
    slim_file = slim_yaml(dets["root"], "gfl_cwd.yml", dets["teacher"], dets["teacher_weights"], slim_method="CWD",
                     distill_loss="ChannelWiseDivergence", distill_loss_name=["cls_f_2", "cls_f_1", "cls_f_0"],
                     ChannelWiseDivergence={"student_channels": 1, "teacher_channels": 1, "tau": 2.0, "weight": 5.0})
    out, _, _, distiller = one_step(dets["student"], slim_file)
    names = ["cls_f_2", "cls_f_1", "cls_f_0", "neck_f_0", "neck_f_1", "neck_f_2"]
    assert list(out.losses) == names
    teacher = distiller.teacher
    for level, name in enumerate(names[:3]):  # the `call` of the shared conv is the level, as ppdet computes it
        neck = out.teacher_features[f"neck_f_{level}"][0]
        with paddle.no_grad():
            manual = teacher.head.gfl_head_cls(teacher.head.conv_feat(neck)[0])
        np.testing.assert_allclose(out.teacher_features[name][0].numpy(), manual.numpy(), rtol=1e-5, atol=1e-6)
    for name in names:  # ppdet's value: weight x CWDFeatureLoss at tau 2, without the paper's tau^2 (4x)
        s, t = np_(out.student_features[name][0]), np_(out.teacher_features[name][0])
        got = float(out.losses[name])
        np.testing.assert_allclose(got, 5.0 * cwd_ref(s, t, 2.0), rtol=5e-4, atol=1e-9)
        ppdet = ppdet_cwd(s, t, student_channels=1, teacher_channels=1, tau=2.0, weight=5.0)
        np.testing.assert_allclose(got, ppdet, rtol=1e-5, atol=1e-9)
    assert float(out.losses["neck_f_0"]) > 1e-4  # a term that is not all zero

    # normalize: true, through the command line: two training iterations
    norm_file = slim_yaml(dets["root"], "gfl_cwd_norm.yml", dets["teacher"], dets["teacher_weights"],
                          slim_method="CWD", distill_loss="CWDFeatureLoss", distill_loss_name=["cls_f_0", "cls_f_1",
                                                                                               "cls_f_2"],
                          CWDFeatureLoss={"student_channels": 80, "teacher_channels": 80, "normalize": True,
                                          "tau": 1.0, "weight": 5.0})
    out, _, _, _ = one_step(dets["student"], norm_file)
    for name in ("cls_f_1", "neck_f_2"):
        s, t = np_(out.student_features[name][0]), np_(out.teacher_features[name][0])
        np.testing.assert_allclose(float(out.losses[name]), 5.0 * cwd_ref(s, t, 1.0, normalize=True), rtol=5e-4)
    save = os.path.join(dets["root"], "run_cwd")
    assert run_tool("train", "-c", dets["student"], "--slim_config", norm_file, "--iters", 2, "--save_interval", 2,
                    "--log_iters", 1, "--save_dir", save) == 0
    log = read(os.path.join(save, "record.txt"))
    assert "CWD (ppdet's CWDFeatureLoss: tau 1, normalize true, weight 5, no tau^2)" in log
    assert "cls_f_0: " in log and "neck_f_2: " in log and os.path.exists(os.path.join(save, "iter_2"))


def test_cwd_on_yolov3_necks_with_align_convolutions_and_gfl_channels_refused(dets, capsys):
    slim_file = yolo_slim(dets, "yolo_cwd.yml", slim_method="CWD", distill_loss="CWDFeatureLoss",
                          distill_loss_name=["neck_f_0", "neck_f_1", "neck_f_2"],
                          CWDFeatureLoss={"student_channels": [16, 8, 8], "teacher_channels": [24, 16, 16],
                                          "normalize": True, "tau": 2.0, "weight": 3.0})
    out, _, _, distiller = one_step(dets["yolo_student"], slim_file)
    for i, (fn, sc, tc) in enumerate(zip(distiller.loss_fns, [16, 8, 8], [24, 16, 16])):
        name = f"neck_f_{i}"
        s, t = np_(out.student_features[name][0]), np_(out.teacher_features[name][0])
        assert s.shape[1] == sc and t.shape[1] == tc  # the loss aligns the channels itself, as ppdet's does
        ppdet = ppdet_cwd(s, t, fn, student_channels=sc, teacher_channels=tc, normalize=True, tau=2.0, weight=3.0)
        np.testing.assert_allclose(float(out.losses[name]), ppdet, rtol=1e-5)
    assert len(distiller.loss_layers) == 3  # the align convolutions train with the student
    bad = slim_yaml(dets["root"], "gfl_cwd_bad.yml", dets["teacher"], dets["teacher_weights"], slim_method="CWD",
                    distill_loss="CWDFeatureLoss", distill_loss_name=["cls_f_0"],
                    CWDFeatureLoss={"student_channels": 16, "teacher_channels": 32})
    assert run_tool("train", "-c", dets["student"], "--slim_config", bad, "--iters", 1) == 2
    assert "Set them equal" in capsys.readouterr().err


def test_ld_on_gfl_heads(dets):
    slim_file = slim_yaml(dets["root"], "gfl_ld.yml", dets["teacher"], dets["teacher_weights"], slim_method="LD",
                     TrainReader={"batch_transforms": [{"Gt2GFLTarget": {"compute_vlr_region": True}}]})
    out, batch, task, _ = one_step(dets["ld_student"], slim_file)
    label = {k: v.numpy() for k, v in task.distill_label(batch).items()}
    assert (label["vlr_regions"] > 0).any() and (label["labels"] < 1).any()  # terms that are not all empty
    settings = {"loss_ld": ("ld", 10, 0.25), "loss_ld_vlr": ("ld_vlr", 10, 0.25), "loss_kd": ("kd", 2, 10.0)}
    for name, (term, T, weight) in settings.items():
        s = [np_(x) for x in out.student_features[name]]
        t = [np_(x) for x in out.teacher_features[name]]
        np.testing.assert_allclose(float(out.losses[name]), ld_ref(s, t, label, term, T, weight), rtol=1e-3,
                                   atol=1e-12)
    save = os.path.join(dets["root"], "run_ld")
    assert run_tool("train", "-c", dets["ld_student"], "--slim_config", slim_file, "--iters", 2, "--save_interval", 2,
                    "--log_iters", 1, "--save_dir", save) == 0
    log = read(os.path.join(save, "record.txt"))
    assert "loss_ld_vlr: " in log and "LDGFLHead trains as a GFLHead" in log
    # the checkpoint loads into the student config's own model (its LDGFLHead) for evaluation
    assert run_tool("eval", "-c", dets["ld_student"], "-o", f"weights={save}/iter_2/model.pdparams") == 0


def test_ld_without_vlr_targets_and_unsupported_methods_are_explained(dets, capsys):
    no_vlr = slim_yaml(dets["root"], "gfl_ld_bad.yml", dets["teacher"], dets["teacher_weights"], slim_method="LD")
    assert run_tool("train", "-c", dets["student"], "--slim_config", no_vlr, "--iters", 1) == 2
    assert "compute_vlr_region: true" in capsys.readouterr().err
    bad = yolo_slim(dets, "bad_KD.yml", slim_method="KD", distill_loss="DistillPPYOLOELoss")
    assert run_tool("train", "-c", dets["yolo_student"], "--slim_config", bad, "--iters", 1) == 2
    err = capsys.readouterr().err
    assert "supported" in err and "CWD, FGD, LD, PPYOLOEDistill" in err, err
    bad = yolo_slim(dets, "bad_ppyoloe.yml", slim_method="PPYOLOEDistill", distill_loss="DistillPPYOLOELoss")
    assert run_tool("train", "-c", dets["yolo_student"], "--slim_config", bad, "--iters", 1) == 2
    assert "it needs PPYOLOEHead" in capsys.readouterr().err


# ----- distill_train without pairs; a teacher whose dataset is elsewhere --------------------------------
def test_yolov3_pair_without_terms_gets_the_l2_default_and_teacher_data_need_not_exist(dets, tmp_path):
    teacher = tmp_path / "teacher_elsewhere.yml"  # its datasets point at a folder that does not exist
    teacher.write_text(f"_BASE_: ['{dets['yolo_teacher']}']\nnum_classes: null\n"
                       "TrainDataset: {dataset_dir: /nonexistent/nuclei_boxes}\n"
                       "EvalDataset: {dataset_dir: /nonexistent/nuclei_boxes}\n"
                       "TestDataset: {type: ImageFolder, anno_path: /nonexistent/nuclei_boxes/label_list.txt}\n")
    save = tmp_path / "run"
    assert run_tool("distill_train", "-c", dets["yolo_student"], "-t", teacher, "--teacher_pretrained",
                    dets["yolo_weights"], "--iters", 1, "--save_interval", 1, "--log_iters", 1,
                    "--save_dir", save, "-o", f"TrainDataset.dataset_dir={dets['data']}",
                    f"EvalDataset.dataset_dir={dets['data']}") == 0
    log = read(save / "record.txt")
    assert "using the YOLOv3 default, L2Loss on the head outputs yolo_head.yolo_output.0" in log
    for level in range(3):
        assert f"distill pair 'l2_out{level}' (student 'yolo_head.yolo_output.{level}'" in log
        assert f"l2_out{level}: " in log
    assert "weight 0.1" in log
