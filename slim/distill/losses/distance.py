"""Elementwise distances between equal-shaped tensors: L2 (MSE), L1, smooth L1; mean over every element.

`temperature` divides both inputs before comparing (as PaddleSlim configs use it); 1 changes nothing.
"""
import paddle.nn as nn

from ._utils import smooth_l1
from .registry import register_loss


class _Elementwise(nn.Layer):
    uses_label = False
    same_shape = True
    pair_arity = 1

    def __init__(self, temperature=1.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, student, teacher, label=None):
        diff = student - teacher
        if self.temperature != 1.0:
            diff = diff / self.temperature  # s/T - t/T
        return self.elementwise(diff).mean()


@register_loss("MSELoss", "l2")
class L2Loss(_Elementwise):
    """L = mean((s/T - t/T)^2) over all elements.

        - {student: neck.0, teacher: neck.0, loss: L2Loss, weight: 1.0}
    """

    def elementwise(self, diff):
        return diff * diff


@register_loss("l1")
class L1Loss(_Elementwise):
    """L = mean(|s/T - t/T|) over all elements.

        - {student: neck.0, teacher: neck.0, loss: L1Loss}
    """

    def elementwise(self, diff):
        return diff.abs()


@register_loss("smooth_l1")
class SmoothL1Loss(_Elementwise):
    """With d = s/T - t/T: L = mean of 0.5 d^2 / beta where |d| < beta, else |d| - 0.5 beta.

        - {student: neck.0, teacher: neck.0, loss: {type: SmoothL1Loss, beta: 1.0}}
    """

    def __init__(self, beta=1.0, temperature=1.0):
        super().__init__(temperature)
        if beta <= 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        self.beta = float(beta)

    def elementwise(self, diff):
        return smooth_l1(diff, self.beta)
