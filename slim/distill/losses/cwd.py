"""Channel-wise distillation (Shu et al., ICCV 2021)."""
import paddle.nn as nn

from ..errors import ShapeMismatchError
from ._utils import kl_rows_from_logits
from .registry import register_loss


@register_loss("ChannelWiseLoss", "cwd", "CWDLoss")
class SegChannelwiseLoss(nn.Layer):
    """Each channel's map becomes a distribution over its positions, phi(y_c) = softmax(y_c / tau) over
    the H*W (or L) positions, and

        L = tau^2 / (N*C) * sum_{n,c} sum_i phi(t_nc)_i (log phi(t_nc)_i - log phi(s_nc)_i)

    Takes (N, C, H, W) or (N, C, L) maps.

        - {student: backbone.bb_3_1, teacher: backbone.bb_3_2, loss: {type: SegChannelwiseLoss, tau: 4},
           align: {type: 1x1conv}}
    """

    uses_label = False
    same_shape = True
    pair_arity = 1

    def __init__(self, tau=1.0):
        super().__init__()
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.tau = float(tau)

    def forward(self, student, teacher, label=None):
        if student.ndim < 3:
            raise ShapeMismatchError(
                f"SegChannelwiseLoss needs spatial maps (N, C, H, W) or (N, C, L), got shape "
                f"{list(student.shape)}; use KLLoss for (N, C) logits.")
        n, c = student.shape[0], student.shape[1]
        s = student.reshape([n * c, -1]) / self.tau
        t = teacher.reshape([n * c, -1]) / self.tau
        return self.tau ** 2 * kl_rows_from_logits(t, s).sum() / (n * c)
