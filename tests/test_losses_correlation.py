"""DIST, logit-standardised KD/DKD and PKD against independent NumPy float64 references."""
import numpy as np
import paddle
import pytest

from slim.distill.losses import build_loss
from tests.test_losses import IGNORE, f64, ref_dkd, ref_kl, rng, seg_label


# ----- NumPy references ---------------------------------------------------------------------------
def softmax_rows(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def pearson(a, b):
    a, b = a - a.mean(), b - b.mean()
    return (a * b).sum() / (np.sqrt((a * a).sum()) * np.sqrt((b * b).sum()) + 1e-8)


def as_rows(x, label=None):
    """(N, C, *spatial) -> (positions, C), dropping label == IGNORE positions."""
    rows = x if x.ndim == 2 else np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])
    if label is not None:
        rows = rows[np.asarray(label).reshape(-1) != IGNORE]
    return rows


def ref_dist(s, t, tau=1.0, beta=1.0, gamma=1.0, label=None):
    ys, yt = softmax_rows(as_rows(s, label) / tau), softmax_rows(as_rows(t, label) / tau)
    inter = 1 - np.mean([pearson(ys[i], yt[i]) for i in range(ys.shape[0])])
    intra = 1 - np.mean([pearson(ys[:, j], yt[:, j]) for j in range(ys.shape[1])])
    return tau ** 2 * (beta * inter + gamma * intra)


def zscore(x, axis):
    """Standardise along the class axis with the sample standard deviation (ddof 1), eps 1e-7."""
    mean = x.mean(axis=axis, keepdims=True)
    std = x.std(axis=axis, ddof=1, keepdims=True)
    return (x - mean) / (std + 1e-7)


def ref_pkd(s, t):
    def norm(f):
        rows = np.transpose(f, (1, 0, 2, 3)).reshape(f.shape[1], -1)
        return (rows - rows.mean(axis=1, keepdims=True)) / (rows.std(axis=1, ddof=1, keepdims=True) + 1e-6)
    return np.mean((norm(s) - norm(t)) ** 2) / 2


# ----- DIST ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("tau,beta,gamma", [(1.0, 1.0, 1.0), (4.0, 1.0, 2.0)])
def test_dist_on_class_logits(tau, beta, gamma):
    r = rng(40)
    s, t = r.randn(8, 6) * 2, r.randn(8, 6) * 2
    got = build_loss({"type": "DISTLoss", "tau": tau, "beta": beta, "gamma": gamma})(f64(s), f64(t))
    assert got.shape == [] and got.dtype == paddle.float64
    np.testing.assert_allclose(float(got), ref_dist(s, t, tau, beta, gamma), rtol=1e-6)


def test_dist_on_maps_every_valid_pixel_is_a_sample():
    r = rng(41)
    s, t = r.randn(2, 4, 3, 3), r.randn(2, 4, 3, 3)
    label = seg_label(r, 2, 3, 3, 4)
    loss = build_loss({"type": "dist", "tau": 2.0})
    np.testing.assert_allclose(float(loss(f64(s), f64(t), label=paddle.to_tensor(label))),
                               ref_dist(s, t, 2.0, label=label), rtol=1e-6)
    np.testing.assert_allclose(float(loss(f64(s), f64(t))), ref_dist(s, t, 2.0), rtol=1e-6)


def test_dist_is_zero_for_the_teacher_itself():
    t = rng(42).randn(6, 5)
    assert abs(float(build_loss("DISTLoss")(f64(t), f64(t)))) < 1e-5  # up to the 1e-8 in the denominators


# ----- logit standardisation ----------------------------------------------------------------------
def test_logit_standardised_kl_is_kl_of_z_scored_logits():
    r = rng(43)
    s, t = r.randn(6, 5) * 3 + 2, r.randn(6, 5) * 0.5 - 1
    got = build_loss({"type": "KLLoss", "temperature": 2.0, "logit_standardization": True})(f64(s), f64(t))
    np.testing.assert_allclose(float(got), ref_kl(zscore(s, 1), zscore(t, 1), 2.0), rtol=1e-6)
    # on maps, per pixel, with ignored pixels left out
    s, t = r.randn(2, 4, 3, 2), r.randn(2, 4, 3, 2)
    label = seg_label(r, 2, 3, 2, 4)
    got = build_loss({"type": "KLLoss", "logit_standardization": True})(f64(s), f64(t), label=paddle.to_tensor(label))
    np.testing.assert_allclose(float(got), ref_kl(zscore(s, 1), zscore(t, 1), 1.0, label), rtol=1e-6)


def test_logit_standardisation_makes_kl_blind_to_the_scale_and_shift_of_the_logits():
    r = rng(44)
    s, t = r.randn(5, 7), r.randn(5, 7)
    loss = build_loss({"type": "KLLoss", "temperature": 4.0, "logit_standardization": True})
    np.testing.assert_allclose(float(loss(f64(s), f64(t))), float(loss(f64(3 * s + 5), f64(t))), rtol=1e-6)


def test_logit_standardised_dkd():
    r = rng(45)
    s, t = r.randn(8, 5) * 3, r.randn(8, 5) * 3
    y = r.randint(0, 5, size=8)
    loss = build_loss({"type": "DKDLoss", "alpha": 1.0, "beta": 8.0, "temperature": 4.0, "logit_standardization": True})
    np.testing.assert_allclose(float(loss(f64(s), f64(t), label=paddle.to_tensor(y))),
                               ref_dkd(zscore(s, 1), zscore(t, 1), y, 1.0, 8.0, 4.0), rtol=1e-6)


# ----- PKD ----------------------------------------------------------------------------------------
def test_pkd_matches_numpy_and_is_blind_to_channel_scale_and_shift():
    r = rng(46)
    s, t = r.randn(2, 3, 4, 5), r.randn(2, 3, 4, 5)
    loss = build_loss("PKDLoss")
    np.testing.assert_allclose(float(loss(f64(s), f64(t))), ref_pkd(s, t), rtol=1e-6)
    scaled = s * np.array([2.0, 0.5, 7.0]).reshape(1, 3, 1, 1) + 3.0
    np.testing.assert_allclose(float(loss(f64(scaled), f64(t))), ref_pkd(s, t), rtol=1e-5)


def test_pkd_equals_ppdet_pkd_feature_loss():
    from slim.tasks.det.compat import import_ppdet
    import_ppdet()
    from ppdet.slim.distill_loss import PKDFeatureLoss
    r = rng(47)
    s = paddle.to_tensor(r.randn(2, 4, 6, 6), dtype="float32")
    t = paddle.to_tensor(r.randn(2, 4, 6, 6), dtype="float32")
    theirs = PKDFeatureLoss(student_channels=4, teacher_channels=4, normalize=True, loss_weight=1.0, resize_stu=True)
    np.testing.assert_allclose(float(build_loss("pkd")(s, t)), float(theirs(s, t)), rtol=1e-5)


# ----- MGD ----------------------------------------------------------------------------------------
def mgd_reference(loss, s, t, keep):
    """The formula with the loss's own weights, written out with functional convolutions."""
    import paddle.nn.functional as F
    x = F.conv2d(s, loss.align.weight) if loss.align is not None else s
    g1, g2 = loss.generation[0], loss.generation[2]
    y = F.conv2d(F.relu(F.conv2d(x * keep, g1.weight, g1.bias, padding=1)), g2.weight, g2.bias, padding=1)
    return loss.alpha_mgd * float(((y - t) ** 2).sum()) / s.shape[0]


def test_mgd_matches_the_formula_with_its_random_mask():
    r = rng(48)
    s = paddle.to_tensor(r.randn(2, 3, 5, 5), dtype="float32")
    t = paddle.to_tensor(r.randn(2, 4, 5, 5), dtype="float32")
    loss = build_loss({"type": "MGDLoss", "student_channels": 3, "teacher_channels": 4, "alpha_mgd": 1e-2,
                       "lambda_mgd": 0.5})
    paddle.seed(3)
    got = float(loss(s, t))
    paddle.seed(3)
    keep = (paddle.rand([2, 1, 5, 5]) >= 0.5).astype("float32")
    assert 0 < float(keep.mean()) < 1
    np.testing.assert_allclose(got, mgd_reference(loss, s, t, keep), rtol=1e-5)
    nothing_masked = build_loss({"type": "mgd", "student_channels": 3, "teacher_channels": 4, "lambda_mgd": 0.0})
    np.testing.assert_allclose(float(nothing_masked(s, t)),
                               mgd_reference(nothing_masked, s, t, paddle.ones([2, 1, 5, 5])), rtol=1e-5)


def test_mgd_trains_its_generator_with_the_student():
    from slim.distill import Distiller, parse_pairs
    student = paddle.nn.Sequential(paddle.nn.Conv2D(3, 6, 3, padding=1), paddle.nn.ReLU())
    teacher = paddle.nn.Sequential(paddle.nn.Conv2D(3, 8, 3, padding=1), paddle.nn.ReLU())
    pairs = parse_pairs([{"name": "mgd", "student": "0", "teacher": "0", "weight": 1.0,
                          "loss": {"type": "MGDLoss", "student_channels": 6, "teacher_channels": 8, "alpha_mgd": 1.0}}])
    distiller = Distiller(student, teacher, pairs)
    x = paddle.randn([2, 3, 6, 6])
    distiller.build(x)
    names = [n for n, _ in distiller.named_extra_parameters()]
    assert any(n.startswith("loss_layers.") and "generation" in n for n in names)
    assert any(n.startswith("loss_layers.") and "align" in n for n in names)
    out = distiller(x)
    out.loss.backward()
    assert student[0].weight.grad is not None and float(student[0].weight.grad.abs().sum()) > 0
    generator = dict(distiller.named_extra_parameters())
    grads = [p.grad for n, p in generator.items() if "generation" in n]
    assert grads and all(g is not None and float(g.abs().sum()) > 0 for g in grads)
