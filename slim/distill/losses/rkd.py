"""Relational knowledge distillation (Park et al., CVPR 2019)."""
import paddle
import paddle.nn as nn

from ._utils import smooth_l1
from .registry import register_loss


def _distances(x, eps):
    """(N, N) Euclidean distances between rows, diagonal exactly 0 (clip before sqrt: finite grads)."""
    sq = (x * x).sum(axis=1)
    d2 = sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * x.matmul(x.t())
    off_diagonal = 1.0 - paddle.diag(paddle.ones_like(sq))
    return paddle.clip(d2, min=eps).sqrt() * off_diagonal


def _angles(x, eps):
    """cos of the angle at x_i between x_j and x_k for all (i, j, k), flattened (zero when j or k == i)."""
    diff = x.unsqueeze(0) - x.unsqueeze(1)  # diff[i, j] = x_j - x_i
    unit = diff / paddle.clip((diff * diff).sum(axis=2, keepdim=True), min=eps).sqrt()
    return paddle.bmm(unit, unit.transpose([0, 2, 1])).reshape([-1])


@register_loss("rkd")
class RKDLoss(nn.Layer):
    """Samples are flattened to (N, D) (student and teacher D may differ).

        psi_D = pairwise distances / their mean over the N*(N-1) pairs i != j (diagonal 0)
        psi_A[i, j, k] = <e_ij, e_ik>, e_ij = (x_j - x_i) / |x_j - x_i|, over all N^3 triples
        L = distance_weight * smooth_l1(psi_D(s), psi_D(t)) + angle_weight * smooth_l1(psi_A(s), psi_A(t))

    smooth_l1 has beta 1 and is the mean over all N^2 (resp. N^3) entries, as in RepDistiller.

        - {student: $output, teacher: $output, loss: {type: RKDLoss, distance_weight: 25, angle_weight: 50}}
    """

    uses_label = False
    same_shape = False
    pair_arity = 1

    def __init__(self, distance_weight=25.0, angle_weight=50.0, eps=1e-12):
        super().__init__()
        self.distance_weight, self.angle_weight = float(distance_weight), float(angle_weight)
        self.eps = float(eps)

    def _normalized_distances(self, x):
        d = _distances(x, self.eps)
        n = x.shape[0]
        return d / (d.sum() / max(n * (n - 1), 1) + self.eps)

    def forward(self, student, teacher, label=None):
        s = student.reshape([student.shape[0], -1])
        t = teacher.reshape([teacher.shape[0], -1])
        terms = []
        if self.distance_weight:
            d = self._normalized_distances(s) - self._normalized_distances(t)
            terms.append(self.distance_weight * smooth_l1(d).mean())
        if self.angle_weight:
            a = _angles(s, self.eps) - _angles(t, self.eps)
            terms.append(self.angle_weight * smooth_l1(a).mean())
        return paddle.add_n(terms) if terms else s.sum() * 0.0
