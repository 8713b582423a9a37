"""Segmentation metrics against a direct per-pixel count on fixed inputs."""
import numpy as np
import pytest

from slim.tasks.seg.metrics import ConfusionMatrix


def reference(pred, label, num_classes, ignore=255):
    keep = label != ignore
    out = {"iou": [], "dice": [], "prec": []}
    inter_all, p_all, l_all = 0, [], []
    for c in range(num_classes):
        p = (pred == c) & keep
        g = (label == c) & keep
        inter = np.logical_and(p, g).sum()
        union = np.logical_or(p, g).sum()
        out["iou"].append(inter / union if union else 0.0)
        out["dice"].append(2 * inter / (p.sum() + g.sum()) if (p.sum() + g.sum()) else 0.0)
        out["prec"].append(inter / p.sum() if p.sum() else 0.0)
        inter_all += inter
        p_all.append(p.sum())
        l_all.append(g.sum())
    n = keep.sum()
    po = inter_all / n
    pe = sum(a * b for a, b in zip(p_all, l_all)) / n ** 2
    return np.mean(out["iou"]), po, (po - pe) / (1 - pe), np.mean(out["dice"]), out["iou"], out["prec"]


def test_metrics_match_a_direct_count():
    r = np.random.RandomState(0)
    label = r.randint(0, 3, size=(2, 9, 7))
    pred = np.where(r.rand(2, 9, 7) < 0.7, label, r.randint(0, 3, size=(2, 9, 7)))
    label[0, :2] = 255
    cm = ConfusionMatrix(3)
    cm.update(pred[:1], label[:1])
    cm.update(pred[1:], label[1:])  # accumulation over batches
    m = cm.metrics()
    miou, acc, kappa, dice, ious, precs = reference(pred, label, 3)
    np.testing.assert_allclose([m["mIoU"], m["Acc"], m["Kappa"], m["Dice"]], [miou, acc, kappa, dice], rtol=1e-12)
    np.testing.assert_allclose(m["class_IoU"], ious, rtol=1e-12)
    np.testing.assert_allclose(m["class_Acc"], precs, rtol=1e-12)


def test_known_values_and_absent_class():
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]))
    m = cm.metrics()
    # class 0: inter 1, union 2 -> 0.5; class 1: inter 2, union 3 -> 2/3; class 2 absent -> 0
    np.testing.assert_allclose(m["class_IoU"], [0.5, 2 / 3, 0.0])
    assert m["Acc"] == 0.75


def test_label_outside_the_classes_is_a_clear_error():
    cm = ConfusionMatrix(2)
    with pytest.raises(ValueError, match=r"label values \[7\].*num_classes"):
        cm.update(np.array([0, 1]), np.array([0, 7]))
