"""PaddleClas's Loss.Train entries (slim/tasks/ppcls/losses.py) against independent NumPy float64 references,
with PaddleClas's term names and the entry's weight applied."""
import numpy as np
import paddle
import pytest

from slim.distill.errors import ConfigError
from slim.tasks.ppcls.losses import CombinedLoss, build_loss_entry

N, C = 6, 5


def rng(seed=0):
    return np.random.RandomState(seed)


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def log_softmax(z):
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def onehot(y, c=C):
    return np.eye(c)[y]


@pytest.fixture(scope="module")
def inputs():
    r = rng(0)
    s, t = r.randn(N, C) * 2, r.randn(N, C) * 2
    y = r.randint(0, C, size=N)
    return s, t, y


def run(entry, predicts_np, y):
    loss = build_loss_entry(entry)
    predicts = {k: ({kk: paddle.to_tensor(vv.astype("float32")) for kk, vv in v.items()} if isinstance(v, dict)
                    else paddle.to_tensor(v.astype("float32"))) for k, v in predicts_np.items()}
    out = CombinedLoss([loss])(predicts, {"label": paddle.to_tensor(y.astype("int64"))})
    return {k: float(v) for k, v in out.items()}


# ----- references -----------------------------------------------------------------------------------------
def ref_ce(z, y, eps=None):
    target = onehot(y, z.shape[1])
    if eps:
        target = target * (1 - eps) + eps / z.shape[1]
    return -(target * log_softmax(z)).sum(1).mean()


def ref_kl(s, t, T):
    pt = softmax(t / T)
    return T ** 2 * (pt * (np.log(pt) - log_softmax(s / T))).sum() / s.shape[0]


def ref_dml(s, t, act="softmax", sum_classes=False):
    if act == "softmax":
        s, t = softmax(s), softmax(t)
    elif act == "sigmoid":
        s, t = 1 / (1 + np.exp(-s)), 1 / (1 + np.exp(-t))
    c, eps = s.shape[1], 1e-12
    kl = lambda x, tg: tg * np.log((tg + eps) / (x + eps)) * c  # noqa: E731
    loss = (kl(s, t) + kl(t, s)) / 2
    return loss.sum(1).mean() if sum_classes else loss.mean()


def ref_dkd(s, t, y, T, alpha, beta):
    total = 0.0
    for i in range(s.shape[0]):
        ps, pt = softmax(s[i] / T), softmax(t[i] / T)
        bs, bt = np.array([ps[y[i]], 1 - ps[y[i]]]), np.array([pt[y[i]], 1 - pt[y[i]]])
        tckd = (bt * np.log(bt / bs)).sum()
        rest = [k for k in range(s.shape[1]) if k != y[i]]
        qs, qt = softmax(s[i, rest] / T), softmax(t[i, rest] / T)
        nckd = (qt * np.log(qt / qs)).sum()
        total += alpha * tckd + beta * nckd
    return total / s.shape[0] * T ** 2


def ref_pearson(a, b):
    a, b = a - a.mean(), b - b.mean()
    return (a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-8)


def ref_dist(s, t, beta, gamma, tau=1.0):
    ys, yt = softmax(s / tau), softmax(t / tau)
    inter = 1 - np.mean([ref_pearson(ys[i], yt[i]) for i in range(len(ys))])
    intra = 1 - np.mean([ref_pearson(ys[:, j], yt[:, j]) for j in range(ys.shape[1])])
    return tau ** 2 * (beta * inter + gamma * intra)


def ref_wsl(s, t, y, T):
    ce_s = -(onehot(y) * log_softmax(s)).sum(1)
    ce_t = -(onehot(y) * log_softmax(t)).sum(1)
    w = 1 - np.exp(-np.maximum(ce_s / (ce_t + 1e-7), 0))
    kd = -(softmax(t / T) * log_softmax(s / T)).sum(1)
    return T ** 2 * (kd * w).mean()


def ref_skd(s, t, y, T, mult, alpha):
    def sphere(z):
        return (z - z.mean(1, keepdims=True)) / np.sqrt(z.var(1, keepdims=True) + 1e-7) * mult

    s2, t2 = sphere(s), sphere(t)
    kd = -(softmax(t2 / T) * log_softmax(s2 / T)).sum(1).mean()
    ce = -(onehot(y) * log_softmax(s2)).sum(1).mean()
    return kd * T ** 2 * alpha + ce * (1 - alpha)


def smooth_l1(d):
    a = np.abs(d)
    return np.where(a < 1, 0.5 * d * d, a - 0.5)


def ref_rkd(s, t):
    s, t = s.reshape(len(s), -1), t.reshape(len(t), -1)

    def dist(e):
        d2 = (e * e).sum(1)[:, None] + (e * e).sum(1)[None] - 2 * e @ e.T
        d = np.sqrt(np.maximum(d2, 1e-12))
        return d / (d.mean() + 1e-12)

    def angle(e):
        diff = e[None, :, :] - e[:, None, :]
        unit = diff / np.maximum(np.linalg.norm(diff, axis=2, keepdims=True), 1e-12)
        return np.einsum("ijd,ikd->ijk", unit, unit).reshape(-1)

    return smooth_l1(angle(s) - angle(t)).mean(), smooth_l1(dist(s) - dist(t)).mean()


# ----- tests ------------------------------------------------------------------------------------------------
def test_gt_ce_per_model_with_weight_and_label_smoothing(inputs):
    s, t, y = inputs
    got = run({"DistillationGTCELoss": {"weight": 0.5, "model_names": ["Student", "Teacher"]}},
              {"Student": s, "Teacher": t}, y)
    assert list(got) == ["CELoss_Student", "CELoss_Teacher"]
    assert got["CELoss_Student"] == pytest.approx(0.5 * ref_ce(s, y), rel=1e-5)
    assert got["CELoss_Teacher"] == pytest.approx(0.5 * ref_ce(t, y), rel=1e-5)
    got = run({"DistillationGTCELoss": {"weight": 1.0, "model_names": ["Student"], "epsilon": 0.1}}, {"Student": s}, y)
    assert got["CELoss_Student"] == pytest.approx(ref_ce(s, y, 0.1), rel=1e-5)
    got = run({"CELoss": {"weight": 2.0}}, {"logits": s}, y)  # a single model (dict or tensor output)
    assert got == {"CELoss": pytest.approx(2 * ref_ce(s, y), rel=1e-5)}


def test_distillation_ce_is_soft_label_ce_without_temperature(inputs):
    s, t, y = inputs
    got = run({"DistillationCELoss": {"weight": 1.0, "model_name_pairs": [["Student", "Teacher"]]}},
              {"Student": s, "Teacher": t}, y)
    assert got == {"CELoss_Student_Teacher": pytest.approx(-(softmax(t) * log_softmax(s)).sum(1).mean(), rel=1e-5)}


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_kldiv(inputs, T):
    s, t, y = inputs
    got = run({"DistillationKLDivLoss": {"weight": 1.0, "model_name_pairs": [["Student", "Teacher"]],
                                         "temperature": T}}, {"Student": s, "Teacher": t}, y)
    assert got == {"loss_kldiv_Student_Teacher": pytest.approx(ref_kl(s, t, T), rel=1e-5)}


@pytest.mark.parametrize("act,sum_classes", [("softmax", False), ("sigmoid", False), ("softmax", True)])
def test_dml(inputs, act, sum_classes):
    s, t, y = inputs
    got = run({"DistillationDMLLoss": {"weight": 1.0, "model_name_pairs": [["Student", "Teacher"]], "act": act,
                                       "sum_across_class_dim": sum_classes}}, {"Student": s, "Teacher": t}, y)
    assert got == {"DMLLoss_Student_Teacher_0": pytest.approx(ref_dml(s, t, act, sum_classes), rel=1e-5)}


def test_dkd_with_labels_and_with_teacher_argmax(inputs):
    s, t, y = inputs
    pairs = [["Student", "Teacher"]]
    got = run({"DistillationDKDLoss": {"weight": 1.0, "model_name_pairs": pairs, "temperature": 2, "alpha": 1.0,
                                       "beta": 8.0}}, {"Student": s, "Teacher": t}, y)
    assert got == {"loss_dkd_Student_Teacher": pytest.approx(ref_dkd(s, t, y, 2.0, 1.0, 8.0), rel=1e-4)}
    got = run({"DistillationDKDLoss": {"weight": 1.0, "model_name_pairs": pairs, "use_target_as_gt": True}},
              {"Student": s, "Teacher": t}, y)
    assert got["loss_dkd_Student_Teacher"] == pytest.approx(ref_dkd(s, t, t.argmax(1), 1.0, 1.0, 1.0), rel=1e-4)


def test_dist_paddleclas_form_and_paper_form(inputs):
    s, t, y = inputs
    pairs = [["Student", "Teacher"]]
    got = run({"DistillationDISTLoss": {"weight": 2.0, "model_name_pairs": pairs, "beta": 1.0, "gamma": 2.0}},
              {"Student": s, "Teacher": t}, y)
    assert got == {"loss_dist_Student_Teacher": pytest.approx(2 * ref_dist(s, t, 1.0, 2.0), rel=1e-5)}
    got = run({"DistillationDISTLoss": {"weight": 1.0, "model_name_pairs": pairs, "tau": 4.0}},
              {"Student": s, "Teacher": t}, y)
    assert got["loss_dist_Student_Teacher"] == pytest.approx(ref_dist(s, t, 1.0, 1.0, 4.0), rel=1e-5)


def test_wsl_and_skd(inputs):
    s, t, y = inputs
    pairs = [["Student", "Teacher"]]
    got = run({"DistillationWSLLoss": {"weight": 2.5, "model_name_pairs": pairs, "temperature": 2}},
              {"Student": s, "Teacher": t}, y)
    assert got == {"wsl_loss_Student_Teacher": pytest.approx(2.5 * ref_wsl(s, t, y, 2.0), rel=1e-5)}
    got = run({"DistillationSKDLoss": {"weight": 1.0, "model_name_pairs": pairs, "temperature": 1.0,
                                       "multiplier": 2.0, "alpha": 0.9}}, {"Student": s, "Teacher": t}, y)
    assert got == {"skd_loss_Student_Teacher": pytest.approx(ref_skd(s, t, y, 1.0, 2.0, 0.9), rel=1e-5)}


def test_rkd_on_captured_outputs():
    r = rng(1)
    fs, ft = r.randn(N, 4, 2, 2), r.randn(N, 8, 2, 2)
    got = run({"DistillationRKDLoss": {"weight": 1.0, "student_keepkeys": ["blocks[1]"],
                                       "teacher_keepkeys": ["blocks[3]"]}},
              {"Student": {"logits": r.randn(N, C), "blocks[1]": fs},
               "Teacher": {"logits": r.randn(N, C), "blocks[3]": ft}}, np.zeros(N, dtype=int))
    angle, dist = ref_rkd(fs, ft)
    assert list(got) == ["loss_angle_0_Student_Teacher", "loss_dist_0_Student_Teacher"]
    assert got["loss_angle_0_Student_Teacher"] == pytest.approx(angle, rel=1e-4, abs=1e-6)
    assert got["loss_dist_0_Student_Teacher"] == pytest.approx(dist, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("mode,act", [("l2", None), ("l1", "softmax"), ("smooth_l1", "sigmoid")])
def test_distance(mode, act):
    r = rng(2)
    a, b = r.randn(N, 3, 2, 2) * 2, r.randn(N, 3, 2, 2) * 2
    got = run({"DistillationDistanceLoss": {"weight": 1.0, "mode": mode, "act": act, "key": "blocks5",
                                            "model_name_pairs": [["Student", "Teacher"]]}},
              {"Student": {"logits": a[:, 0, 0], "blocks5": a}, "Teacher": {"logits": b[:, 0, 0], "blocks5": b}},
              np.zeros(N, dtype=int))
    if act == "softmax":
        a, b = softmax(a), softmax(b)
    elif act == "sigmoid":
        a, b = 1 / (1 + np.exp(-a)), 1 / (1 + np.exp(-b))
    d = a - b
    ref = {"l2": (d * d).mean(), "l1": np.abs(d).mean(), "smooth_l1": smooth_l1(d).mean()}[mode]
    assert got == {f"loss_{mode}_loss_{mode}_0": pytest.approx(ref, rel=1e-5)}


def test_distance_smooth_l1_with_delta_is_paddles_huber():
    r = rng(3)
    a, b = r.randn(N, 3, 2, 2), r.randn(N, 3, 2, 2)
    got = run({"DistillationDistanceLoss": {"weight": 1.0, "mode": "smooth_l1", "delta": 0.3, "key": "blocks5",
                                            "model_name_pairs": [["Student", "Teacher"]]}},
              {"Student": {"logits": a[:, 0, 0], "blocks5": a}, "Teacher": {"logits": b[:, 0, 0], "blocks5": b}},
              np.zeros(N, dtype=int))
    d = np.abs(a - b)
    ref = np.where(d < 0.3, 0.5 * d * d, 0.3 * d - 0.5 * 0.3 ** 2).mean()  # paddle's smooth_l1_loss(delta=0.3)
    assert got == {"loss_smooth_l1_loss_smooth_l1_0": pytest.approx(ref, rel=1e-5)}


def conv2d(x, w, b, pad):
    """NumPy float64 convolution, (N, Ci, H, W) * (Co, Ci, k, k) + b, stride 1."""
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, _, h, wd = x.shape
    co, _, k, _ = w.shape
    out = np.zeros((n, co, h - k + 1, wd - k + 1))
    for i in range(k):
        for j in range(k):
            out += np.einsum("nchw,oc->nohw", x[:, :, i:i + h - k + 1, j:j + wd - k + 1], w[:, :, i, j])
    return out + b.reshape(1, -1, 1, 1)


def test_mgd_pair_loss_channel_mask_generator_and_gradients(monkeypatch):
    r = rng(3)
    fs, ft = r.randn(2, 3, 4, 4), r.randn(2, 5, 4, 4)
    entry = {"DistillationPairLoss": {"weight": 0.5, "base_loss_name": "MGDLoss", "model_name_pairs":
                                      [["Student", "Teacher"]], "s_key": "blocks[7]", "t_key": "blocks[15]",
                                      "name": "loss_mgd", "student_channels": 3, "teacher_channels": 5,
                                      "alpha_mgd": 0.7, "lambda_mgd": 0.5}}
    loss = build_loss_entry(entry)
    mgd = loss.loss_func
    mask = (r.rand(2, 5, 1, 1) >= 0.5).astype(np.float32)
    monkeypatch.setattr(mgd, "channel_mask", lambda n, c: paddle.to_tensor(mask))
    s_t = paddle.to_tensor(fs.astype("float32"), stop_gradient=False)
    predicts = {"Student": {"logits": paddle.zeros([2, C]), "blocks[7]": s_t},
                "Teacher": {"logits": paddle.zeros([2, C]), "blocks[15]": paddle.to_tensor(ft.astype("float32"))}}
    out = CombinedLoss([loss])(predicts, {"label": paddle.zeros([2], dtype="int64")})
    assert list(out) == ["loss_mgd_0_Student_Teacher"]
    p = {n: v.numpy().astype(np.float64) for n, v in mgd.state_dict().items()}
    x = conv2d(fs, p["align.weight"], p["align.bias"], 0) * mask
    g = np.maximum(conv2d(x, p["generation.0.weight"], p["generation.0.bias"], 1), 0)
    g = conv2d(g, p["generation.2.weight"], p["generation.2.bias"], 1)
    ref = 0.5 * 0.7 * ((g - ft) ** 2).mean()
    assert float(out["loss_mgd_0_Student_Teacher"]) == pytest.approx(ref, rel=1e-4)
    out["loss_mgd_0_Student_Teacher"].backward()  # the generator and the student's map get gradients
    assert s_t.grad is not None and float(s_t.grad.abs().sum()) > 0
    assert all(q.grad is not None for q in mgd.parameters())


def test_pair_losses_reach_both_models_in_mutual_learning(inputs):
    s, t, y = inputs
    a = paddle.to_tensor(s.astype("float32"), stop_gradient=False)
    b = paddle.to_tensor(t.astype("float32"), stop_gradient=False)
    loss = build_loss_entry({"DistillationDMLLoss": {"weight": 1.0, "model_name_pairs": [["Student", "Teacher"]]}})
    sum(CombinedLoss([loss])({"Student": a, "Teacher": b}, {"label": paddle.to_tensor(y)}).values()).backward()
    assert float(a.grad.abs().sum()) > 0 and float(b.grad.abs().sum()) > 0


def test_unsupported_loss_lists_the_supported_ones_and_duplicate_names_are_refused(inputs):
    with pytest.raises(ConfigError, match="AFDLoss.*not supported.*DistillationDKDLoss.*DistillationPairLoss"):
        build_loss_entry({"AFDLoss": {"weight": 1.0}})
    with pytest.raises(ConfigError, match="base_loss_name 'PEFDLoss' is not supported; supported: MGDLoss"):
        build_loss_entry({"DistillationPairLoss": {"base_loss_name": "PEFDLoss", "weight": 1.0}})
    s, t, y = inputs
    twice = [build_loss_entry({"DistillationGTCELoss": {"weight": 1.0, "model_names": ["Student"]}})] * 2
    with pytest.raises(ConfigError, match="both named 'CELoss_Student'"):
        CombinedLoss(twice)({"Student": paddle.to_tensor(s.astype("float32"))}, {"label": paddle.to_tensor(y)})
