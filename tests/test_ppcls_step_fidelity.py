"""A PaddleClas training step, piece by piece, against how PaddleClas builds it: the optimizer (regularizer,
no_weight_decay_name, use_nesterov, clip_norm), the frozen teacher's mode, decoding and resizing (cv2 by default)."""
import copy
import math
import random

import cv2
import numpy as np
import paddle
import pytest
from PIL import Image

from slim.distill.errors import ConfigError
from slim.engine.optim import build_optimizer
from slim.tasks.ppcls.arch import DistillationModel
from slim.tasks.ppcls.data import Compose, RandCropImage, ResizeImage
from slim.tasks.ppcls.decode_resize import Resampler, decode
from slim.tasks.ppcls.optimizer import optimizer_settings

LR = {"name": "ConstLR", "learning_rate": 0.1}


def settings(opt_cfg, shapes=None):
    lines = []
    opt, _ = optimizer_settings(dict(opt_cfg, lr=LR), 4, 2, log=lines.append, named_shapes=shapes)
    return opt, lines


def test_optimizer_section_read_as_paddleclas_reads_it():
    opt, lines = settings({"name": "Momentum", "momentum": 0.8, "use_nesterov": True, "clip_norm": 5,
                           "regularizer": {"name": "L2", "coeff": 1e-4}, "weight_decay": 0.05})
    assert opt == {"type": "Momentum", "momentum": 0.8, "use_nesterov": True, "weight_decay": 1e-4,
                   "grad_clip_cfg": {"name": "ClipGradByNorm", "clip_norm": 5.0}}
    assert any("weight_decay 0.05 is not used (as in PaddleClas)" in m for m in lines)
    shapes = [("fc.weight", [4, 3]), ("fc.bias", [3]), ("bn.weight", [3]), ("pos_embed", [1, 3])]
    # Momentum: one_dim_param_no_weight_decay only counts beside no_weight_decay_name (PaddleClas's Momentum)
    opt, lines = settings({"name": "Momentum", "weight_decay": 1e-4, "one_dim_param_no_weight_decay": True}, shapes)
    assert "custom_cfg" not in opt and any("reads it only with no_weight_decay_name" in m for m in lines)
    opt, _ = settings({"name": "Momentum", "weight_decay": 1e-4, "no_weight_decay_name": "pos_embed",
                       "one_dim_param_no_weight_decay": True}, shapes)
    assert opt["custom_cfg"] == [{"name": n, "weight_decay_mult": 0.0} for n in ("pos_embed", "fc.bias", "bn.weight")]
    opt, _ = settings({"name": "AdamW", "weight_decay": 0.05, "one_dim_param_no_weight_decay": True}, shapes)
    assert [g["name"] for g in opt["custom_cfg"]] == ["fc.bias", "bn.weight"]
    with pytest.raises(ConfigError, match="Optimizer as a list"):
        optimizer_settings([{"Momentum": {"scope": "backbone", "lr": LR}}], 4, 2)


def _model():
    paddle.seed(3)
    return paddle.nn.Sequential(paddle.nn.Linear(4, 6), paddle.nn.BatchNorm1D(6), paddle.nn.Linear(6, 3))


@pytest.mark.parametrize("opt_cfg", [
    {"name": "Momentum", "momentum": 0.9, "regularizer": {"name": "L2", "coeff": 0.01}},
    {"name": "Momentum", "momentum": 0.9, "use_nesterov": True, "regularizer": {"name": "L2", "coeff": 0.01},
     "no_weight_decay_name": "1.", "one_dim_param_no_weight_decay": True},
    {"name": "AdamW", "weight_decay": 0.05, "one_dim_param_no_weight_decay": True, "clip_norm": 0.5},
])
def test_steps_equal_the_optimizer_paddleclas_builds(opt_cfg):
    """Three steps with this package's optimizer and with the paddle optimizer built as PaddleClas's
    ppcls/optimizer/optimizer.py builds it (param groups, L2Decay, apply_decay_param_fun, ClipGradByNorm)."""
    ours, theirs = _model(), _model()
    shapes = [(n, list(p.shape)) for n, p in ours.named_parameters()]
    opt, _ = optimizer_settings(dict(opt_cfg, lr=LR), 4, 2, log=lambda _: None, named_shapes=shapes)
    mine = build_optimizer({"optimizer": opt}, list(ours.named_parameters()), 0.1)
    clip = paddle.nn.ClipGradByNorm(opt_cfg["clip_norm"]) if "clip_norm" in opt_cfg else None
    if opt_cfg["name"] == "Momentum":
        reg = paddle.regularizer.L2Decay(opt_cfg["regularizer"]["coeff"])
        names = opt_cfg.get("no_weight_decay_name", "").split()
        params = theirs.parameters()
        if names:
            without = [p for n, p in theirs.named_parameters() if any(s in n for s in names) or len(p.shape) == 1]
            params = [{"params": [p for p in theirs.parameters() if all(p is not q for q in without)],
                       "weight_decay": reg}, {"params": without, "weight_decay": 0.0}]
        ref = paddle.optimizer.Momentum(0.1, 0.9, params, use_nesterov=opt_cfg.get("use_nesterov", False),
                                        weight_decay=reg, grad_clip=clip, multi_precision=True, use_multi_tensor=True)
    else:
        skip = {p.name for n, p in theirs.named_parameters() if len(p.shape) == 1}
        ref = paddle.optimizer.AdamW(0.1, parameters=theirs.parameters(), weight_decay=opt_cfg["weight_decay"],
                                     grad_clip=clip, apply_decay_param_fun=lambda n: n not in skip)
    x = paddle.to_tensor(np.random.RandomState(0).randn(8, 4).astype("float32"))
    for model, optimizer in ((ours, mine), (theirs, ref)):
        for _ in range(3):
            (model(x) ** 2).mean().backward()
            optimizer.step()
            optimizer.clear_grad()
    for (n, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7, err_msg=n)


def _tiny(seed):
    paddle.seed(seed)
    return paddle.nn.Sequential(paddle.nn.Conv2D(3, 4, 3), paddle.nn.BatchNorm2D(4), paddle.nn.Flatten(),
                                paddle.nn.Linear(4 * 6 * 6, 5))


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_frozen_teacher_mode(mode):
    """eval (default): the frozen teacher's BatchNorm uses its running statistics and keeps them; train (as
    PaddleClas): it normalises with the batch's statistics and updates the running ones, as the teacher alone in
    train mode does."""
    teacher, student = _tiny(1), _tiny(2)
    reference = copy.deepcopy(teacher)
    model = DistillationModel(["Teacher", "Student"], [teacher, student], [True, False], "Student",
                              frozen_mode=mode)
    model.train()
    x = paddle.to_tensor(np.random.RandomState(1).randn(6, 3, 8, 8).astype("float32") * 3 + 1)
    out = model(x)
    getattr(reference, mode)()
    expected = reference(x)
    np.testing.assert_allclose(out["Teacher"].numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
    moved = np.abs(teacher[1]._mean.numpy()).max() > 0
    assert moved == (mode == "train")
    np.testing.assert_allclose(teacher[1]._mean.numpy(), reference[1]._mean.numpy(), rtol=1e-6)
    assert out["Teacher"].stop_gradient  # no gradient reaches the frozen model
    model.eval()
    assert not teacher.training  # evaluation: every model in eval mode, as PaddleClas evaluates


def test_teacher_cache_is_refused_for_a_train_mode_teacher():
    from slim.tasks.ppcls.task import Task
    model = DistillationModel(["Teacher", "Student"], [_tiny(1), _tiny(2)], [True, False], "Student",
                              frozen_mode="train")
    with pytest.raises(ConfigError, match="frozen_mode train.*-o Arch.frozen_mode=eval"):
        Task().inner_teacher(model)
    with pytest.raises(ConfigError, match="frozen_mode must be eval"):
        DistillationModel(["T"], [_tiny(1)], [True], "T", frozen_mode="batch")


def _image(h=28, w=30, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (h, w, 3)).astype(np.uint8)


def test_resize_is_cv2_by_default_and_pil_on_request():
    img = _image()
    for name, flag in ((None, cv2.INTER_LINEAR), ("area", cv2.INTER_AREA), ("bicubic", cv2.INTER_CUBIC)):
        np.testing.assert_array_equal(Resampler(name)(img, (17, 13)), cv2.resize(img, (17, 13), interpolation=flag))
    pil = np.asarray(Image.fromarray(img).resize((17, 13), Image.BILINEAR))
    np.testing.assert_array_equal(Resampler(backend="pil")(img, (17, 13)), pil)
    assert not np.array_equal(pil, Resampler()(img, (17, 13)))  # the backends differ when shrinking
    # resize_short: PaddleClas's int(round(side * short / min side)), then cv2
    out = ResizeImage(resize_short=36)(img)
    np.testing.assert_array_equal(out, cv2.resize(img, (int(round(30 * 36 / 28)), 36), interpolation=cv2.INTER_LINEAR))
    with pytest.raises(ConfigError, match="backend 'skimage' is not supported"):
        ResizeImage(size=8, backend="skimage")


def test_rand_crop_image_is_paddleclas_crop_from_the_same_draws():
    img = _image(28, 28, 1)
    op = RandCropImage(size=32, scale=[0.6, 1.0])
    for seed in range(20):
        random.seed(seed)
        got = op(img)
        random.seed(seed)  # PaddleClas's RandCropImage, written out: aspect, area, then the corner
        aspect = random.uniform(3. / 4., 4. / 3.)
        bound = min((28 / 28) / aspect, (28 / 28) * aspect)
        area = 28 * 28 * random.uniform(min(0.6, bound), min(1.0, bound))
        w, h = int(math.sqrt(area * aspect)), int(math.sqrt(area / aspect))
        i, j = random.randint(0, 28 - w), random.randint(0, 28 - h)
        np.testing.assert_array_equal(got, cv2.resize(img[j:j + h, i:i + w, :], (32, 32)))


def test_decode_as_paddleclas_decodes(tmp_path):
    grey = np.random.RandomState(2).randint(0, 256, (9, 7)).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    np.testing.assert_array_equal(decode(str(tmp_path / "g.png")), np.repeat(grey[:, :, None], 3, axis=2))
    rgb = _image(9, 7, 3)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    np.testing.assert_array_equal(decode(str(tmp_path / "c.png")), rgb)
    np.testing.assert_array_equal(decode(str(tmp_path / "c.png"), to_rgb=False), rgb[:, :, ::-1])
    np.testing.assert_array_equal(decode(str(tmp_path / "c.png"), backend="pil"), rgb)
    ops = Compose([{"DecodeImage": {"to_rgb": False}}, {"NormalizeImage": {"mean": [0, 0, 0], "std": [1, 1, 1],
                                                                           "order": ""}}], "ops")
    assert ops.ops[0].to_rgb is False and ops.ops[0].backend == "cv2"
