"""The objectness-weighted YOLOv3 distillation loss against an independent NumPy float64 computation."""
import numpy as np
import paddle
import pytest

from slim.distill.errors import ShapeMismatchError
from slim.distill.losses import build_loss
import slim.tasks.det  # noqa: F401  (registers YOLOv3DistillLoss)

paddle.set_device("cpu")


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def bce(z, p):
    """-p log sigmoid(z) - (1 - p) log(1 - sigmoid(z)), computed directly."""
    return -(p * np.log(sigmoid(z)) + (1 - p) * np.log(1 - sigmoid(z)))


def reference(s, t, na, iou_aware=False, weights=(1.0, 1.0, 1.0)):
    """Loop over samples, anchors and cells; per-element sums divided by element counts."""
    if iou_aware:
        s, t = s[:, na:], t[:, na:]
    n, ch, h, w = s.shape
    k = ch // na  # 5 + classes
    reg_sum = cls_sum = obj_sum = 0.0
    for b in range(n):
        for a in range(na):
            for i in range(h):
                for j in range(w):
                    sv = s[b, a * k:(a + 1) * k, i, j]
                    tv = t[b, a * k:(a + 1) * k, i, j]
                    wt = sigmoid(tv[4])
                    reg = (bce(sv[0], sigmoid(tv[0])) + bce(sv[1], sigmoid(tv[1])) + abs(sv[2] - tv[2])
                           + abs(sv[3] - tv[3]))
                    reg_sum += reg * wt
                    cls_sum += sum(bce(sv[5 + c], sigmoid(tv[5 + c])) * wt for c in range(k - 5))
                    obj_sum += bce(sv[4], 1.0 if tv[4] > 0 else 0.0)
    cells = n * na * h * w
    reg, cls, obj = reg_sum / cells, cls_sum / (cells * (k - 5)), obj_sum / cells
    return weights[0] * reg + weights[1] * cls + weights[2] * obj


@pytest.mark.parametrize("num_classes,na,iou_aware", [(1, 3, False), (4, 3, False), (2, 2, True)])
def test_yolov3_distill_loss_matches_numpy(num_classes, na, iou_aware):
    rng = np.random.RandomState(num_classes + na)
    ch = na * (5 + num_classes) + (na if iou_aware else 0)
    s = rng.randn(2, ch, 3, 4) * 2
    t = rng.randn(2, ch, 3, 4) * 2
    loss = build_loss({"type": "YOLOv3DistillLoss", "num_anchors": na, "iou_aware": iou_aware})
    got = float(loss(paddle.to_tensor(s), paddle.to_tensor(t)))
    np.testing.assert_allclose(got, reference(s, t, na, iou_aware), rtol=1e-10)


def test_term_weights_and_ppdet_name():
    rng = np.random.RandomState(0)
    s, t = rng.randn(1, 18, 2, 2), rng.randn(1, 18, 2, 2)
    loss = build_loss({"type": "DistillYOLOv3Loss", "reg_weight": 2.0, "cls_weight": 0.5, "obj_weight": 3.0})
    got = float(loss(paddle.to_tensor(s), paddle.to_tensor(t)))
    np.testing.assert_allclose(got, reference(s, t, 3, weights=(2.0, 0.5, 3.0)), rtol=1e-10)


def test_gradient_reaches_the_student_only():
    rng = np.random.RandomState(1)
    s = paddle.to_tensor(rng.randn(1, 18, 2, 2).astype("float32"), stop_gradient=False)
    t = paddle.to_tensor(rng.randn(1, 18, 2, 2).astype("float32"), stop_gradient=False)
    build_loss("YOLOv3DistillLoss")(s, t).backward()
    assert s.grad is not None and float(s.grad.abs().sum()) > 0
    assert t.grad is None  # the teacher's map is detached inside the loss


def test_student_equal_to_teacher_leaves_only_the_entropy_terms():
    # s == t: |w| and |h| terms vanish, BCE(z, sigmoid(z)) is the entropy of sigmoid(z) (not 0)
    rng = np.random.RandomState(2)
    x = rng.randn(1, 18, 2, 2)
    got = float(build_loss("YOLOv3DistillLoss")(paddle.to_tensor(x), paddle.to_tensor(x)))
    np.testing.assert_allclose(got, reference(x, x, 3), rtol=1e-10)


def test_wrong_channel_count_is_explained():
    loss = build_loss({"type": "YOLOv3DistillLoss", "num_anchors": 3})
    with pytest.raises(ShapeMismatchError, match="num_anchors"):
        loss(paddle.zeros([1, 17, 2, 2]), paddle.zeros([1, 17, 2, 2]))
    with pytest.raises(ShapeMismatchError, match="N, A"):
        loss(paddle.zeros([4, 18]), paddle.zeros([4, 18]))
