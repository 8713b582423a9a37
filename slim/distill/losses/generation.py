"""Masked generative distillation: the student's features must regenerate the teacher's."""
import paddle
import paddle.nn as nn

from ..errors import ShapeMismatchError
from .registry import register_loss


@register_loss("mgd")
class MGDLoss(nn.Layer):
    """MGD (Yang et al., ECCV 2022). The student's map, aligned to the teacher's channels by a 1x1 conv when
    they differ, is masked at random positions (each kept with probability 1 - lambda_mgd) and passed
    through a small generator G = conv3x3 -> ReLU -> conv3x3, which must rebuild the teacher's map:

        L = alpha_mgd * sum((G(align(f_s) * M) - f_t)^2) / N

    The align conv and the generator train with the student (they are saved and resumed with the
    connectors). Paper settings: alpha 2e-5, lambda 0.65 for detection; alpha 7e-5, lambda 0.5 for
    classification. Student and teacher maps need the same H, W (`align: {resize: student}`).

        - {student: neck.0, teacher: neck.0, loss: {type: MGDLoss, student_channels: 96, teacher_channels: 192}}
    """
    uses_label = False
    same_shape = False  # the channels are aligned inside the loss
    pair_arity = 1

    def __init__(self, student_channels, teacher_channels, alpha_mgd=2e-5, lambda_mgd=0.65):
        super().__init__()
        if not 0 <= lambda_mgd < 1:
            raise ValueError(f"lambda_mgd (the share of positions masked) must be in [0, 1), got {lambda_mgd}")
        self.alpha_mgd, self.lambda_mgd = float(alpha_mgd), float(lambda_mgd)
        s, t = int(student_channels), int(teacher_channels)
        self.align = nn.Conv2D(s, t, 1, bias_attr=False) if s != t else None
        self.generation = nn.Sequential(nn.Conv2D(t, t, 3, padding=1), nn.ReLU(), nn.Conv2D(t, t, 3, padding=1))
        self.student_channels, self.teacher_channels = s, t

    def forward(self, student, teacher, label=None):
        if student.ndim != 4 or teacher.ndim != 4 or list(student.shape[2:]) != list(teacher.shape[2:]):
            raise ShapeMismatchError(
                f"MGDLoss compares (N, C, H, W) maps of the same H, W; got student {list(student.shape)} and "
                f"teacher {list(teacher.shape)}. Add `align: {{resize: student}}` to the pair.")
        if student.shape[1] != self.student_channels or teacher.shape[1] != self.teacher_channels:
            raise ShapeMismatchError(
                f"MGDLoss was built for {self.student_channels} student and {self.teacher_channels} teacher "
                f"channels but got {student.shape[1]} and {teacher.shape[1]}: set student_channels and "
                f"teacher_channels to the maps' channels.")
        n, _, h, w = student.shape
        x = self.align(student) if self.align is not None else student
        keep = (paddle.rand([n, 1, h, w]) >= self.lambda_mgd).astype(x.dtype)
        generated = self.generation(x * keep)
        return self.alpha_mgd * ((generated - teacher) ** 2).sum() / n
