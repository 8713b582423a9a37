"""Flow of solution procedure (Yim et al., CVPR 2017)."""
import paddle
import paddle.nn as nn

from ..errors import ShapeMismatchError
from ._utils import pool_to_common
from .registry import register_loss


def fsp_matrix(f1, f2):
    """G = (1/(h*w)) * sum over positions of f1[:, :, pos]^T f2[:, :, pos] -> (N, m, n).

    If the maps' spatial sizes differ, the larger one is adaptive-average-pooled to the smaller.
    """
    f1, f2 = pool_to_common(f1, f2)
    n, hw = f1.shape[0], f1.shape[2] * f1.shape[3]
    a = f1.reshape([n, f1.shape[1], hw])
    b = f2.reshape([n, f2.shape[1], hw])
    return paddle.bmm(a, b.transpose([0, 2, 1])) / hw


@register_loss("fsp")
class FSPLoss(nn.Layer):
    """For two maps F1 (N, m, h, w), F2 (N, n, h', w') of each network, G = fsp_matrix(F1, F2), and

        L = mean over the N*m*n entries of (G_t - G_s)^2

    i.e. the paper's squared Frobenius norm divided by m*n, averaged over samples. Called as
    loss((s1, s2), (t1, t2)); the student's (m, n) must equal the teacher's.

        - {student: [backbone.bb_1_0, backbone.bb_1_1], teacher: [backbone.bb_1_0, backbone.bb_1_3],
           loss: FSPLoss}
    """

    uses_label = False
    same_shape = False
    pair_arity = 2

    def forward(self, student, teacher, label=None):
        (s1, s2), (t1, t2) = student, teacher
        s_mn, t_mn = (s1.shape[1], s2.shape[1]), (t1.shape[1], t2.shape[1])
        if s_mn != t_mn:
            raise ShapeMismatchError(
                f"FSPLoss compares FSP matrices of (m, n) channels: student {s_mn} vs teacher {t_mn} "
                f"(student maps {list(s1.shape)}, {list(s2.shape)}; teacher maps {list(t1.shape)}, "
                f"{list(t2.shape)}). Add a connector (`align: {{type: 1x1conv}}`) or pick layers with "
                f"equal channels.")
        diff = fsp_matrix(t1, t2) - fsp_matrix(s1, s2)
        return (diff * diff).mean()
