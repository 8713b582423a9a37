"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017)."""
import paddle.nn as nn
import paddle.nn.functional as F

from ._utils import pool_to_common
from .registry import register_loss


def attention_map(x, p):
    """a(F) = L2-normalised (over positions) mean over channels of |F|^p, as (N, H*W)."""
    a = x.abs().pow(p).mean(axis=1).reshape([x.shape[0], -1])
    return F.normalize(a, p=2, axis=1)


@register_loss("at", "AttentionTransferLoss")
class ATLoss(nn.Layer):
    """L = mean over the N*H*W entries of (a(F_s) - a(F_t))^2, a as in `attention_map`.

    This is RepDistiller's convention (the paper uses the p-norm of the difference per sample).
    Channels may differ; if H, W differ the larger map is adaptive-average-pooled to the smaller.

        - {student: backbone.bb_2_1, teacher: backbone.bb_2_5, loss: {type: ATLoss, p: 2}}
    """

    uses_label = False
    same_shape = False
    pair_arity = 1

    def __init__(self, p=2):
        super().__init__()
        if p <= 0:
            raise ValueError(f"p must be > 0, got {p}")
        self.p = p

    def forward(self, student, teacher, label=None):
        student, teacher = pool_to_common(student, teacher)
        diff = attention_map(student, self.p) - attention_map(teacher, self.p)
        return (diff * diff).mean()
