"""Losses that compare correlations rather than values: DIST on class distributions, PKD on feature maps.

Both are invariant to the scale and shift of what they compare, so a student need not match the teacher's
magnitudes, only its relations (between classes, between samples, across positions).
"""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ..errors import ShapeMismatchError
from ._utils import classes_last, valid_mask
from .registry import register_loss


def _pearson(a, b, axis, eps=1e-8):
    """Pearson correlation of a and b along `axis` (the cosine of the centred vectors)."""
    a = a - a.mean(axis=axis, keepdim=True)
    b = b - b.mean(axis=axis, keepdim=True)
    return (a * b).sum(axis=axis) / (a.norm(axis=axis) * b.norm(axis=axis) + eps)


@register_loss("dist")
class DISTLoss(nn.Layer):
    """DIST (Huang et al., NeurIPS 2022): distillation from a stronger teacher by correlation.

    Y = softmax(Z / tau) per sample (rows: samples, columns: classes; for (N, C, H, W) maps every pixel is a
    row, pixels labelled `ignore_index` left out when `label` is given):
        inter = 1 - mean over rows of pearson(Ys_row, Yt_row)       (relations between classes)
        intra = 1 - mean over columns of pearson(Ys_col, Yt_col)    (relations between samples)
        L = tau^2 * (beta * inter + gamma * intra)

        - {student: $output, teacher: $output, loss: {type: DISTLoss, tau: 1, beta: 1, gamma: 1}}
    """
    uses_label = True  # optional: masks ignore_index pixels
    same_shape = True
    pair_arity = 1

    def __init__(self, tau=1.0, beta=1.0, gamma=1.0, axis=1, ignore_index=255):
        super().__init__()
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.tau, self.beta, self.gamma = float(tau), float(beta), float(gamma)
        self.axis, self.ignore_index = int(axis), ignore_index

    def forward(self, student, teacher, label=None):
        s, t = classes_last(student, self.axis), classes_last(teacher, self.axis)
        if label is not None:
            _, valid = valid_mask(label, student, self.axis, self.ignore_index)
            keep = paddle.nonzero(valid).reshape([-1])
            s, t = paddle.gather(s, keep), paddle.gather(t, keep)
        if s.shape[0] == 0:  # every position ignored: 0, still with a graph
            return (student * 0).sum()
        ys, yt = F.softmax(s / self.tau, axis=-1), F.softmax(t / self.tau, axis=-1)
        inter = 1.0 - _pearson(ys, yt, axis=1).mean()
        intra = 1.0 - _pearson(ys, yt, axis=0).mean()
        return self.tau ** 2 * (self.beta * inter + self.gamma * intra)


def channel_standardized(x, eps=1e-6):
    """Each channel of an (N, C, H, W) map to zero mean and unit standard deviation over (N, H, W), std with
    ddof 1 (Paddle's default), as PKD and PaddleDetection's PKDFeatureLoss normalise."""
    if x.ndim != 4:
        raise ShapeMismatchError(f"PKDLoss compares (N, C, H, W) feature maps, got shape {list(x.shape)}")
    rows = x.transpose([1, 0, 2, 3]).reshape([x.shape[1], -1])
    mean = rows.mean(axis=-1, keepdim=True)
    std = paddle.std(rows, axis=-1, keepdim=True, unbiased=True)
    return (rows - mean) / (std + eps)


@register_loss("pkd")
class PKDLoss(nn.Layer):
    """PKD (Cao et al., 2022): feature maps compared after per-channel standardisation, i.e. through their
    Pearson correlation. With f -> (f - mean_c) / (std_c + 1e-6) over (N, H, W) for each channel c:

        L = mean((norm(f_s) - norm(f_t))^2) / 2

    Needs equal shapes (a connector for channels, `resize` for H, W).

        - {student: neck.0, teacher: neck.0, loss: {type: PKDLoss}, weight: 6, align: {type: 1x1conv}}
    """
    uses_label = False
    same_shape = True
    pair_arity = 1

    def __init__(self, eps=1e-6):
        super().__init__()
        self.eps = float(eps)

    def forward(self, student, teacher, label=None):
        s, t = channel_standardized(student, self.eps), channel_standardized(teacher, self.eps)
        return F.mse_loss(s, t) / 2
