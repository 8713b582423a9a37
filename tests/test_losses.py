"""The distillation losses against NumPy float64 references, finite-difference gradients and errors."""
import math

import numpy as np
import paddle
import pytest

from slim.distill.errors import ConfigError, ShapeMismatchError, UnknownLossError
from slim.distill.losses import LOSSES, build_loss

paddle.set_device("cpu")
IGNORE = 255


def f64(a):
    return paddle.to_tensor(np.asarray(a), dtype="float64")


def rng(seed):
    return np.random.RandomState(seed)


# ----- NumPy references ---------------------------------------------------------------------------
def ref_log_softmax(z):
    """log softmax of a 1-D vector."""
    m = z.max()
    return z - (m + math.log(np.exp(z - m).sum()))


def ref_rows(x):
    """(N, C, *spatial) -> list of C-vectors, one per sample/position, in (n, *spatial) order."""
    if x.ndim == 2:
        return [x[i] for i in range(x.shape[0])]
    moved = np.moveaxis(x, 1, -1)
    return [moved[idx] for idx in np.ndindex(*moved.shape[:-1])]


def ref_nearest(label, size):
    """Nearest resize (N, H, W) -> (N, *size): source index floor(i * in / out)."""
    h, w = label.shape[1:]
    rows = [int(math.floor(i * h / size[0])) for i in range(size[0])]
    cols = [int(math.floor(j * w / size[1])) for j in range(size[1])]
    return label[:, rows][:, :, cols]


def ref_positions_mean(per_row, label, logits_shape):
    """Mean of per-position values, dropping label == IGNORE positions (label None: plain mean)."""
    per_row = np.asarray(per_row, dtype=np.float64)
    if label is None:
        return per_row.mean()
    label = np.asarray(label)
    if len(logits_shape) > 2:
        if label.ndim == len(logits_shape):
            label = label[:, 0]
        if label.shape[1:] != tuple(logits_shape[2:]):
            label = ref_nearest(label, logits_shape[2:])
    keep = label.reshape(-1) != IGNORE
    return per_row[keep].sum() / keep.sum() if keep.any() else 0.0


def ref_kl_vec(log_p, log_q):
    return float((np.exp(log_p) * (log_p - log_q)).sum())


def ref_kl(s, t, T=1.0, label=None):
    per = [ref_kl_vec(ref_log_softmax(b / T), ref_log_softmax(a / T)) for a, b in zip(ref_rows(s), ref_rows(t))]
    return T * T * ref_positions_mean(per, label, s.shape)


def ref_soft_ce(s, t, T=1.0, label=None):
    per = [-(np.exp(ref_log_softmax(b / T)) * ref_log_softmax(a / T)).sum() for a, b in zip(ref_rows(s), ref_rows(t))]
    return ref_positions_mean(per, label, s.shape)


def ref_dml(s, t, T=1.0, label=None):
    per = []
    for a, b in zip(ref_rows(s), ref_rows(t)):
        la, lb = ref_log_softmax(a / T), ref_log_softmax(b / T)
        per.append((ref_kl_vec(lb, la) + ref_kl_vec(la, lb)) / 2)
    return T * T * ref_positions_mean(per, label, s.shape)


def ref_dkd(s, t, label, alpha, beta, T):
    targets = np.asarray(label).reshape(-1)
    total, count = 0.0, 0
    for a, b, y in zip(ref_rows(s), ref_rows(t), targets):
        if y == IGNORE:
            continue
        ps, pt = np.exp(ref_log_softmax(a / T)), np.exp(ref_log_softmax(b / T))
        others = np.arange(len(a)) != y
        bs, bt = np.array([ps[y], ps[others].sum()]), np.array([pt[y], pt[others].sum()])
        tckd = (bt * np.log(bt / bs)).sum()
        hs, ht = ps[others] / ps[others].sum(), pt[others] / pt[others].sum()
        nckd = (ht * np.log(ht / hs)).sum()
        total += (alpha * tckd + beta * nckd) * T * T
        count += 1
    return total / count


def ref_smooth_l1(d, beta=1.0):
    d = np.asarray(d, dtype=np.float64)
    return np.where(np.abs(d) < beta, 0.5 * d ** 2 / beta, np.abs(d) - 0.5 * beta).mean()


def ref_cwd(s, t, tau):
    n, c = s.shape[:2]
    total = 0.0
    for i in range(n):
        for k in range(c):
            ls, lt = ref_log_softmax(s[i, k].ravel() / tau), ref_log_softmax(t[i, k].ravel() / tau)
            total += ref_kl_vec(lt, ls)
    return tau ** 2 * total / (n * c)


def ref_adaptive_pool(x, h, w):
    H, W = x.shape[2:]
    out = np.zeros(x.shape[:2] + (h, w))
    for i in range(h):
        r0, r1 = (i * H) // h, -((-(i + 1) * H) // h)
        for j in range(w):
            c0, c1 = (j * W) // w, -((-(j + 1) * W) // w)
            out[:, :, i, j] = x[:, :, r0:r1, c0:c1].mean(axis=(2, 3))
    return out


def ref_common_size(a, b):
    h, w = min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3])
    if a.shape[2:] != (h, w):
        a = ref_adaptive_pool(a, h, w)
    if b.shape[2:] != (h, w):
        b = ref_adaptive_pool(b, h, w)
    return a, b


def ref_gram(f1, f2):
    f1, f2 = ref_common_size(f1, f2)
    h, w = f1.shape[2:]
    return np.einsum("nmhw,nkhw->nmk", f1, f2) / (h * w)


def ref_fsp(s1, s2, t1, t2):
    return ((ref_gram(t1, t2) - ref_gram(s1, s2)) ** 2).mean()


def ref_at(s, t, p=2):
    s, t = ref_common_size(s, t)

    def att(f):
        a = (np.abs(f) ** p).mean(axis=1).reshape(f.shape[0], -1)
        return a / np.sqrt((a ** 2).sum(axis=1, keepdims=True))

    return ((att(s) - att(t)) ** 2).mean()


def ref_rkd(s, t, wd=25.0, wa=50.0):
    s, t = s.reshape(s.shape[0], -1), t.reshape(t.shape[0], -1)
    n = s.shape[0]

    def dist(x):
        d = np.array([[np.linalg.norm(x[i] - x[j]) for j in range(n)] for i in range(n)])
        return d / (d.sum() / (n * (n - 1)))

    def angle(x):
        out = []
        for i in range(n):
            for j in range(n):
                for k in range(n):
                    u, v = x[j] - x[i], x[k] - x[i]
                    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
                    out.append(0.0 if nu == 0 or nv == 0 else u @ v / (nu * nv))
        return np.array(out)

    return wd * ref_smooth_l1(dist(s) - dist(t)) + wa * ref_smooth_l1(angle(s) - angle(t))


def seg_label(r, n, h, w, c):
    label = r.randint(0, c, size=(n, h, w))
    label[0, 0, :2] = IGNORE
    label[-1, -1, -1] = IGNORE
    return label


# ----- registry -----------------------------------------------------------------------------------
ALIASES = {
    "KLLoss": ["kl", "KDLoss"],
    "DistillCrossEntropyLoss": ["soft_ce", "SoftLabelCELoss"],
    "DMLLoss": [],
    "DKDLoss": ["dkd"],
    "L2Loss": ["MSELoss", "l2"],
    "L1Loss": ["l1"],
    "SmoothL1Loss": ["smooth_l1"],
    "SegChannelwiseLoss": ["ChannelWiseLoss", "cwd", "CWDLoss"],
    "FSPLoss": ["fsp"],
    "ATLoss": ["at", "AttentionTransferLoss"],
    "RKDLoss": ["rkd"],
    "DISTLoss": ["dist"],
    "PKDLoss": ["pkd"],
    "MGDLoss": ["mgd"],
    "HardDistillationLoss": ["hard_distillation"],
}
# constructor arguments of the losses that need some (MGD's generator is sized from the channels; with
# lambda 0 its mask keeps every position, so repeated calls give the same value)
ARGS = {"MGDLoss": {"student_channels": 3, "teacher_channels": 4, "lambda_mgd": 0.0, "alpha_mgd": 0.1}}
# the engine's own losses (task plug-ins, e.g. slim.tasks.det, register theirs and test them themselves)
CLASSES = sorted({cls.__name__ for cls in LOSSES.values() if cls.__module__.startswith("slim.distill.losses")})


def test_names_and_aliases_resolve_to_one_class_each():
    assert set(CLASSES) == set(ALIASES)
    for name, aliases in ALIASES.items():
        for alias in aliases:
            assert LOSSES[alias] is LOSSES[name], alias


@pytest.mark.parametrize("name", CLASSES)
def test_class_attributes(name):
    cls = LOSSES[name]
    assert isinstance(cls.uses_label, bool) and isinstance(cls.same_shape, bool)
    assert cls.pair_arity == (2 if name == "FSPLoss" else 1)
    assert cls.same_shape == (name not in ("FSPLoss", "ATLoss", "RKDLoss", "MGDLoss"))
    assert cls.uses_label == (name in ("KLLoss", "DistillCrossEntropyLoss", "DMLLoss", "DKDLoss", "DISTLoss"))
    assert isinstance(cls(**ARGS.get(name, {})), paddle.nn.Layer)
    doc = cls.__doc__ or ""
    assert "L = " in doc, "docstring gives the formula"
    assert f"loss: {name}" in doc or f"loss: {{type: {name}" in doc, "docstring gives a yaml example"


# ----- values: softmax losses ---------------------------------------------------------------------
@pytest.mark.parametrize("T", [1.0, 4.0])
def test_kl_class_logits(T):
    r = rng(1)
    s, t = r.randn(6, 5) * 2, r.randn(6, 5) * 2
    got = build_loss({"type": "KLLoss", "temperature": T})(f64(s), f64(t))
    assert got.shape == [] and got.dtype == paddle.float64
    np.testing.assert_allclose(float(got), ref_kl(s, t, T), rtol=1e-5)


def test_kl_pixels_with_ignore_index_and_label_layouts():
    r = rng(2)
    s, t = r.randn(2, 3, 4, 5), r.randn(2, 3, 4, 5)
    label = seg_label(r, 2, 4, 5, 3)
    loss = build_loss({"type": "KLLoss", "temperature": 2.0})
    expected = ref_kl(s, t, 2.0, label)
    assert not np.isclose(expected, ref_kl(s, t, 2.0))  # the mask changes the value
    np.testing.assert_allclose(float(loss(f64(s), f64(t), label=paddle.to_tensor(label))), expected, rtol=1e-5)
    np.testing.assert_allclose(float(loss(f64(s), f64(t), label=paddle.to_tensor(label[:, None]))), expected,
                               rtol=1e-5)
    np.testing.assert_allclose(float(loss(f64(s), f64(t))), ref_kl(s, t, 2.0), rtol=1e-5)
    # a label at another resolution is resized (nearest) to the logits' size
    for big in (label.repeat(2, axis=1).repeat(2, axis=2), r.randint(0, 3, size=(2, 7, 9))):
        big = big.copy()
        big[0, 0, 0] = IGNORE
        np.testing.assert_allclose(float(loss(f64(s), f64(t), label=paddle.to_tensor(big))),
                                   ref_kl(s, t, 2.0, big), rtol=1e-5)


def test_kl_sample_labels_mask_samples():
    r = rng(3)
    s, t = r.randn(5, 4), r.randn(5, 4)
    y = np.array([0, IGNORE, 3, 1, IGNORE])
    got = build_loss("kl")(f64(s), f64(t), label=paddle.to_tensor(y))
    np.testing.assert_allclose(float(got), ref_kl(s, t, 1.0, y), rtol=1e-5)


def test_kl_known_values():
    z = f64(rng(4).randn(3, 4))
    assert abs(float(build_loss("KLLoss")(z, z))) < 1e-12
    # one sample, two classes: p_t = (1/2, 1/2); student logits (log 3, 0) -> p_s = (3/4, 1/4)
    s, t = f64([[math.log(3.0), 0.0]]), f64([[0.0, 0.0]])
    at_t1 = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    np.testing.assert_allclose(float(build_loss("KLLoss")(s, t)), at_t1, rtol=1e-12)
    # T = 2: logits halved -> p_s = (sqrt3, 1) / (sqrt3 + 1); the KL is multiplied by T^2 = 4
    q = math.sqrt(3.0) / (math.sqrt(3.0) + 1)
    at_t2 = 4 * (0.5 * math.log(0.5 / q) + 0.5 * math.log(0.5 / (1 - q)))
    np.testing.assert_allclose(float(build_loss({"type": "KLLoss", "temperature": 2})(s, t)), at_t2, rtol=1e-12)


def test_kl_exact_for_confident_float32_logits():
    # p_t = (1, ~0), student sure of the other class: KL = log p_t - log p_s = 100 (to 1e-40).
    # (Paddle's CPU F.log_softmax clips at -64 and would give 64.)
    s = paddle.to_tensor([[0.0, 100.0]], dtype="float32")
    t = paddle.to_tensor([[100.0, 0.0]], dtype="float32")
    np.testing.assert_allclose(float(build_loss("KLLoss")(s, t)), 100.0, rtol=1e-5)
    cwd = build_loss("cwd")(s.reshape([1, 1, 2]), t.reshape([1, 1, 2]))
    np.testing.assert_allclose(float(cwd), 100.0, rtol=1e-5)


def test_all_positions_ignored_gives_zero_with_a_graph():
    r = rng(5)
    s = f64(r.randn(1, 3, 2, 2))
    s.stop_gradient = False
    label = paddle.full([1, 2, 2], IGNORE, dtype="int64")
    for name in ("KLLoss", "DistillCrossEntropyLoss", "DKDLoss"):
        out = build_loss(name)(s, f64(r.randn(1, 3, 2, 2)), label=label)
        assert float(out) == 0.0
        (g,) = paddle.grad(out, [s])
        assert np.all(g.numpy() == 0.0)


def test_soft_cross_entropy():
    r = rng(6)
    s, t = r.randn(7, 5), r.randn(7, 5)
    np.testing.assert_allclose(float(build_loss("soft_ce")(f64(s), f64(t))), ref_soft_ce(s, t), rtol=1e-5)
    s, t = r.randn(2, 4, 3, 3), r.randn(2, 4, 3, 3)
    label = seg_label(r, 2, 3, 3, 4)
    loss = build_loss({"type": "DistillCrossEntropyLoss", "temperature": 3.0})
    np.testing.assert_allclose(float(loss(f64(s), f64(t), label=paddle.to_tensor(label))),
                               ref_soft_ce(s, t, 3.0, label), rtol=1e-5)


def test_dml():
    r = rng(7)
    s, t = r.randn(5, 6), r.randn(5, 6)
    np.testing.assert_allclose(float(build_loss({"type": "DMLLoss", "temperature": 2})(f64(s), f64(t))),
                               ref_dml(s, t, 2.0), rtol=1e-5)
    s, t = r.randn(2, 3, 2, 3), r.randn(2, 3, 2, 3)
    label = seg_label(r, 2, 2, 3, 3)
    np.testing.assert_allclose(float(build_loss("DMLLoss")(f64(s), f64(t), label=paddle.to_tensor(label))),
                               ref_dml(s, t, 1.0, label), rtol=1e-5)


def test_dkd_class_logits_and_pixels():
    r = rng(8)
    s, t = r.randn(8, 5) * 3, r.randn(8, 5) * 3
    y = r.randint(0, 5, size=8)
    loss = build_loss({"type": "DKDLoss", "alpha": 1.0, "beta": 8.0, "temperature": 4.0})
    np.testing.assert_allclose(float(loss(f64(s), f64(t), label=paddle.to_tensor(y))),
                               ref_dkd(s, t, y, 1.0, 8.0, 4.0), rtol=1e-5)
    s, t = r.randn(2, 3, 3, 4) * 2, r.randn(2, 3, 3, 4) * 2
    label = seg_label(r, 2, 3, 4, 3)
    loss = build_loss({"type": "dkd", "alpha": 0.5, "beta": 2.0, "temperature": 1.0})
    np.testing.assert_allclose(float(loss(f64(s), f64(t), label=paddle.to_tensor(label))),
                               ref_dkd(s, t, label, 0.5, 2.0, 1.0), rtol=1e-5)


def test_dkd_confident_logits_stay_finite():
    # p_target ~ 1 - 1e-40: log(1 - p_t) must come from the non-target logits, not from 1 - p_t
    s = f64([[100.0, 5.0, 0.0], [0.0, 80.0, 1.0]])
    t = f64([[90.0, 0.0, 3.0], [2.0, 70.0, 0.0]])
    s.stop_gradient = False
    out = build_loss({"type": "DKDLoss", "temperature": 1.0})(s, t, label=paddle.to_tensor([0, 1]))
    np.testing.assert_allclose(float(out), ref_dkd(s.numpy(), t.numpy(), np.array([0, 1]), 1.0, 8.0, 1.0),
                               rtol=1e-5)
    (g,) = paddle.grad(out, [s])
    assert np.all(np.isfinite(g.numpy()))


# ----- values: feature losses ---------------------------------------------------------------------
def test_elementwise_distances():
    r = rng(9)
    s, t = r.randn(2, 3, 4, 4), r.randn(2, 3, 4, 4)
    d = s - t
    assert (np.abs(d) < 0.5).any() and (np.abs(d) > 1.0).any()  # both sides of beta = 0.5 and 1
    np.testing.assert_allclose(float(build_loss("L2Loss")(f64(s), f64(t))), (d ** 2).mean(), rtol=1e-5)
    np.testing.assert_allclose(float(build_loss("L1Loss")(f64(s), f64(t))), np.abs(d).mean(), rtol=1e-5)
    for beta in (1.0, 0.5):
        np.testing.assert_allclose(float(build_loss({"type": "SmoothL1Loss", "beta": beta})(f64(s), f64(t))),
                                   ref_smooth_l1(d, beta), rtol=1e-5)
    # temperature divides both inputs
    np.testing.assert_allclose(float(build_loss({"type": "MSELoss", "temperature": 2})(f64(s), f64(t))),
                               ((s / 2 - t / 2) ** 2).mean(), rtol=1e-5)
    np.testing.assert_allclose(float(build_loss({"type": "smooth_l1", "temperature": 3})(f64(s), f64(t))),
                               ref_smooth_l1(s / 3 - t / 3), rtol=1e-5)


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_channel_wise_distillation(tau):
    r = rng(10)
    s, t = r.randn(2, 3, 4, 5) * 2, r.randn(2, 3, 4, 5) * 2
    np.testing.assert_allclose(float(build_loss({"type": "cwd", "tau": tau})(f64(s), f64(t))), ref_cwd(s, t, tau),
                               rtol=1e-5)
    s3, t3 = s.reshape(2, 3, 20), t.reshape(2, 3, 20)  # (N, C, L) maps
    np.testing.assert_allclose(float(build_loss({"type": "CWDLoss", "tau": tau})(f64(s3), f64(t3))),
                               ref_cwd(s, t, tau), rtol=1e-5)


def test_channel_wise_softmax_is_over_each_channels_positions():
    r = rng(11)
    s, t = r.randn(1, 2, 3, 4), r.randn(1, 2, 3, 4)
    loss = build_loss("cwd")
    base = float(loss(f64(s), f64(t)))
    # A constant added to a whole channel cancels in the softmax over that channel's H*W positions ...
    shifted = s.copy()
    shifted[:, 0] += 5.0
    np.testing.assert_allclose(float(loss(f64(shifted), f64(t))), base, rtol=1e-9)
    # ... but one added to a single row does not: a softmax over W alone (PaddleSeg 2.8's loss) would
    # be blind to it.
    row_shifted = s.copy()
    row_shifted[:, 0, 0] += 5.0
    assert abs(float(loss(f64(row_shifted), f64(t))) - base) > 1e-3


def test_channel_wise_rejects_class_logits():
    with pytest.raises(ConfigError, match="spatial"):
        build_loss("SegChannelwiseLoss")(f64(np.zeros((2, 3))), f64(np.zeros((2, 3))))


def test_fsp_equal_and_pooled_sizes():
    r = rng(11)
    loss = build_loss("FSPLoss")
    s1, s2, t1, t2 = (r.randn(2, 3, 4, 4), r.randn(2, 5, 4, 4), r.randn(2, 3, 4, 4), r.randn(2, 5, 4, 4))
    np.testing.assert_allclose(float(loss((f64(s1), f64(s2)), (f64(t1), f64(t2)))), ref_fsp(s1, s2, t1, t2),
                               rtol=1e-5)
    # second maps smaller: the first ones are pooled (4x4 -> 2x2, and 5x5 -> 3x3 with uneven bins)
    s2, t2 = r.randn(2, 5, 2, 2), r.randn(2, 5, 2, 2)
    np.testing.assert_allclose(float(loss((f64(s1), f64(s2)), (f64(t1), f64(t2)))), ref_fsp(s1, s2, t1, t2),
                               rtol=1e-5)
    s1, t1, s2, t2 = r.randn(2, 3, 3, 3), r.randn(2, 3, 3, 3), r.randn(2, 4, 5, 5), r.randn(2, 4, 5, 5)
    np.testing.assert_allclose(float(loss((f64(s1), f64(s2)), (f64(t1), f64(t2)))), ref_fsp(s1, s2, t1, t2),
                               rtol=1e-5)


def test_attention_transfer_any_channels_and_sizes():
    r = rng(12)
    s, t = r.randn(2, 3, 4, 4), r.randn(2, 7, 4, 4)
    np.testing.assert_allclose(float(build_loss("ATLoss")(f64(s), f64(t))), ref_at(s, t), rtol=1e-5)
    t_small = r.randn(2, 7, 2, 2)
    np.testing.assert_allclose(float(build_loss("at")(f64(s), f64(t_small))), ref_at(s, t_small), rtol=1e-5)
    np.testing.assert_allclose(float(build_loss({"type": "AttentionTransferLoss", "p": 3})(f64(t_small), f64(s))),
                               ref_at(t_small, s, 3), rtol=1e-5)


def test_rkd():
    r = rng(13)
    s, t = r.randn(5, 2, 2), r.randn(5, 9)
    np.testing.assert_allclose(float(build_loss("RKDLoss")(f64(s), f64(t))), ref_rkd(s, t), rtol=1e-5)
    only_d = build_loss({"type": "rkd", "distance_weight": 1.0, "angle_weight": 0.0})
    np.testing.assert_allclose(float(only_d(f64(s), f64(t))), ref_rkd(s, t, 1.0, 0.0), rtol=1e-5)
    only_a = build_loss({"type": "rkd", "distance_weight": 0.0, "angle_weight": 1.0})
    np.testing.assert_allclose(float(only_a(f64(s), f64(t))), ref_rkd(s, t, 0.0, 1.0), rtol=1e-5)


def test_rkd_duplicate_samples_have_finite_gradients():
    x = np.tile(rng(14).randn(1, 4), (3, 1))
    x[2] += 1.0
    s = f64(x)
    s.stop_gradient = False
    out = build_loss("RKDLoss")(s, f64(rng(15).randn(3, 6)))
    (g,) = paddle.grad(out, [s])
    assert np.isfinite(float(out)) and np.all(np.isfinite(g.numpy()))


# ----- dtype, shape and finite-difference gradients -----------------------------------------------
def case(name, r):
    """(student arrays, teacher arrays, label or None, build args) for one loss class."""
    if name == "FSPLoss":
        return ([r.randn(2, 2, 4, 4), r.randn(2, 3, 2, 2)], [r.randn(2, 2, 4, 4), r.randn(2, 3, 2, 2)], None, {})
    if name == "ATLoss":
        return [r.randn(2, 3, 4, 4)], [r.randn(2, 5, 2, 2)], None, {}
    if name == "SegChannelwiseLoss":
        return [r.randn(2, 3, 3, 3)], [r.randn(2, 3, 3, 3)], None, {"tau": 2.0}
    if name == "RKDLoss":
        return [r.randn(4, 3)], [r.randn(4, 5)], None, {}
    if name == "MGDLoss":
        return [r.randn(2, 3, 3, 3)], [r.randn(2, 4, 3, 3)], None, ARGS[name]
    if name in ("KLLoss", "DistillCrossEntropyLoss", "DMLLoss", "DKDLoss"):
        return [r.randn(2, 4, 2, 3)], [r.randn(2, 4, 2, 3)], seg_label(r, 2, 2, 3, 4), {"temperature": 2.0}
    if name == "DISTLoss":
        return [r.randn(2, 4, 2, 3)], [r.randn(2, 4, 2, 3)], seg_label(r, 2, 2, 3, 4), {"tau": 2.0, "gamma": 2.0}
    if name == "SmoothL1Loss":  # |s - t| away from beta = 1 so the check does not straddle the kink
        t = r.randn(2, 3, 2, 2)
        return [t + r.choice([-1.0, 1.0], size=t.shape) * r.uniform(0.1, 2.0, size=t.shape)], [t], None, {}
    return [r.randn(2, 3, 2, 2)], [r.randn(2, 3, 2, 2) + 0.3], None, {}


def call(loss, name, students, teachers, label):
    kw = {} if label is None else {"label": paddle.to_tensor(label)}
    if name == "FSPLoss":
        return loss(tuple(students), tuple(teachers), **kw)
    return loss(students[0], teachers[0], **kw)


@pytest.mark.parametrize("name", CLASSES)
def test_output_is_0d_in_the_input_dtype(name):
    s, t, label, args = case(name, rng(20))
    loss = build_loss({"type": name, **args})
    out = call(loss, name, [paddle.to_tensor(a, dtype="float32") for a in s],
               [paddle.to_tensor(a, dtype="float32") for a in t], label)
    assert out.shape == [] and out.dtype == paddle.float32 and np.isfinite(float(out))


@pytest.mark.parametrize("name", CLASSES)
def test_gradient_matches_central_differences(name):
    r = rng(30)
    s_arrays, t_arrays, label, args = case(name, r)
    loss = build_loss({"type": name, **args})
    loss.to(dtype="float64")  # a loss with its own layers (MGD's generator) computes in float64 too
    teachers = [f64(a) for a in t_arrays]

    def value(arrays):
        return float(call(loss, name, [f64(a) for a in arrays], teachers, label))

    students = [f64(a) for a in s_arrays]
    for x in students:
        x.stop_gradient = False
    grads = paddle.grad(call(loss, name, students, teachers, label), students)
    eps = 1e-6
    for k, arr in enumerate(s_arrays):
        analytic = grads[k].numpy().reshape(-1)
        assert np.all(np.isfinite(analytic))
        for i in r.choice(arr.size, size=min(5, arr.size), replace=False):
            plus, minus = [a.copy() for a in s_arrays], [a.copy() for a in s_arrays]
            plus[k].reshape(-1)[i] += eps
            minus[k].reshape(-1)[i] -= eps
            numeric = (value(plus) - value(minus)) / (2 * eps)
            np.testing.assert_allclose(analytic[i], numeric, rtol=1e-4, atol=1e-9, err_msg=f"{name}[{k}] at {i}")


# ----- errors -------------------------------------------------------------------------------------
def test_unknown_loss_lists_known_names():
    with pytest.raises(UnknownLossError) as err:
        build_loss({"type": "NoSuchLoss"})
    msg = str(err.value)
    assert "NoSuchLoss" in msg and all(name in msg for name in CLASSES)


def test_unknown_argument_names_accepted_ones():
    with pytest.raises(ConfigError) as err:
        build_loss({"type": "SegChannelwiseLoss", "temperature": 4})
    assert "'temperature'" in str(err.value) and "tau" in str(err.value)
    with pytest.raises(ConfigError) as err:
        build_loss({"type": "KLLoss", "T": 4})
    assert all(a in str(err.value) for a in ("temperature", "axis", "ignore_index"))


def test_bad_argument_value_is_a_config_error():
    with pytest.raises(ConfigError, match="temperature"):
        build_loss({"type": "KLLoss", "temperature": 0})


def test_fsp_mismatched_channels_names_both_shapes():
    r = rng(40)
    with pytest.raises(ShapeMismatchError) as err:
        build_loss("fsp")((f64(r.randn(1, 3, 2, 2)), f64(r.randn(1, 4, 2, 2))),
                          (f64(r.randn(1, 6, 2, 2)), f64(r.randn(1, 4, 2, 2))))
    msg = str(err.value)
    assert "(3, 4)" in msg and "(6, 4)" in msg and "1x1conv" in msg


def test_dkd_without_label_is_a_config_error():
    r = rng(41)
    with pytest.raises(ConfigError, match="DKDLoss needs the ground-truth label"):
        build_loss("DKDLoss")(f64(r.randn(2, 3)), f64(r.randn(2, 3)))
