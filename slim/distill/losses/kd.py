"""Losses on class distributions: KD (Hinton), soft-label cross-entropy, DML, DKD, hard-label distillation (DeiT).

All take logits with the class axis at `axis`: (N, C) for classification, (N, C, H, W) (or any rank)
for dense prediction, where every position is one sample. The result is the mean over samples, or,
when `label` is given, over the positions whose label is not `ignore_index`.
"""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ..errors import ConfigError
from ._utils import classes_last, kl_rows, kl_rows_from_logits, log_softmax, masked_mean, standardize_rows, valid_mask
from .registry import register_loss

# subtracted from the target logit to take it out of a softmax (exp(-1e4) is 0 in every float type)
_MASK_OUT = 1e4


class _SoftmaxLoss(nn.Layer):
    uses_label = True  # optional, except for DKD: masks ignore_index positions
    same_shape = True
    pair_arity = 1

    def __init__(self, temperature=1.0, axis=1, ignore_index=255, logit_standardization=False):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature, self.axis, self.ignore_index = float(temperature), int(axis), ignore_index
        self.logit_standardization = bool(logit_standardization)

    def _rows(self, logits):
        """(positions, classes) logits, z-scored per row with `logit_standardization: true`."""
        rows = classes_last(logits, self.axis)
        return standardize_rows(rows) if self.logit_standardization else rows

    def _log_probs(self, student, teacher):
        t = self.temperature
        return (log_softmax(self._rows(student) / t, axis=-1), log_softmax(self._rows(teacher) / t, axis=-1))

    def _mean(self, per_position, label, logits):
        if label is None:
            return masked_mean(per_position)
        return masked_mean(per_position, valid_mask(label, logits, self.axis, self.ignore_index)[1])


@register_loss("kl", "KDLoss")
class KLLoss(_SoftmaxLoss):
    """Hinton's knowledge distillation.

        p = softmax(z / T) along `axis`;  L = T^2 * sum_k p_t,k (log p_t,k - log p_s,k)

    averaged over samples (N) or positions (N*H*W); with `label`, positions labelled `ignore_index`
    are left out (a label of another spatial size is resized, nearest). With `logit_standardization: true`
    (Sun et al., CVPR 2024) each sample's (pixel's) logits are first z-scored over the classes:
    z -> (z - mean(z)) / (std(z) + 1e-7), std with ddof 1, as in the authors' code.

        - {student: $output, teacher: $output, loss: {type: KLLoss, temperature: 4}, weight: 1.0}
    """

    def forward(self, student, teacher, label=None):
        t = self.temperature
        s_rows, t_rows = self._rows(student) / t, self._rows(teacher) / t
        return t ** 2 * self._mean(kl_rows_from_logits(t_rows, s_rows), label, student)


@register_loss("soft_ce", "SoftLabelCELoss")
class DistillCrossEntropyLoss(_SoftmaxLoss):
    """Soft-label cross-entropy (no T^2 factor), averaged like KLLoss.

        L = -sum_k softmax(t / T)_k * log_softmax(s / T)_k

        - {student: $output, teacher: $output, loss: {type: DistillCrossEntropyLoss, temperature: 2}}
    """

    def forward(self, student, teacher, label=None):
        log_ps, log_pt = self._log_probs(student, teacher)
        return self._mean(-(log_pt.exp() * log_ps).sum(axis=-1), label, student)


@register_loss("dml")
class DMLLoss(_SoftmaxLoss):
    """Deep mutual learning (Zhang et al., CVPR 2018): the symmetric KL, averaged like KLLoss.

        L = T^2 * (KL(p_t || p_s) + KL(p_s || p_t)) / 2,  p = softmax(z / T)

        - {student: $output, teacher: $output, loss: {type: DMLLoss, temperature: 1}}
    """

    def forward(self, student, teacher, label=None):
        log_ps, log_pt = self._log_probs(student, teacher)
        both = kl_rows(log_pt, log_ps) + kl_rows(log_ps, log_pt)
        return self.temperature ** 2 * self._mean(both / 2, label, student)


@register_loss("dkd")
class DKDLoss(_SoftmaxLoss):
    """Decoupled knowledge distillation (Zhao et al., CVPR 2022). Needs the ground-truth label.

    With t the target class of a sample (or pixel) and p = softmax(z / T):
        b = [p_t, 1 - p_t],  TCKD = KL(b_T || b_S)
        p^ = softmax of z / T over the classes != t,  NCKD = KL(p^_T || p^_S)
        L = (alpha * TCKD + beta * NCKD) * T^2, mean over samples (pixels not labelled ignore_index)
    (`logit_standardization: true` z-scores the logits first, as for KLLoss)

        - {student: $output, teacher: $output, loss: {type: DKDLoss, alpha: 1, beta: 8, temperature: 4}}
    """

    def __init__(self, alpha=1.0, beta=8.0, temperature=4.0, axis=1, ignore_index=255, logit_standardization=False):
        super().__init__(temperature, axis, ignore_index, logit_standardization)
        self.alpha, self.beta = float(alpha), float(beta)

    def _log_parts(self, logits, target_mask):
        """log b (rows of 2) and log p^ (target column ~ -1e4, never used) from (M, C) logits."""
        z = logits / self.temperature
        log_all = z.logsumexp(axis=-1)
        z_rest = z - _MASK_OUT * target_mask  # the target logit carries no mass any more
        log_target = (z * target_mask).sum(axis=-1) - log_all
        log_rest = z_rest.logsumexp(axis=-1) - log_all  # log(1 - p_t), computed without 1 - p_t
        log_b = paddle.stack([log_target, log_rest], axis=-1)
        return log_b, log_softmax(z_rest, axis=-1)

    def forward(self, student, teacher, label=None):
        if label is None:
            raise ConfigError("DKDLoss needs the ground-truth label: call it as "
                              "loss(student, teacher, label=labels).")
        s, t = self._rows(student), self._rows(teacher)
        target, valid = valid_mask(label, student, self.axis, self.ignore_index)
        target = target * valid.astype(target.dtype)  # ignored positions get class 0, masked below
        target_mask = F.one_hot(target, s.shape[-1]).astype(s.dtype)
        log_b_s, log_hat_s = self._log_parts(s, target_mask)
        log_b_t, log_hat_t = self._log_parts(t, target_mask)
        tckd = kl_rows(log_b_t, log_b_s)
        nckd = (log_hat_t.exp() * (log_hat_t - log_hat_s) * (1.0 - target_mask)).sum(axis=-1)
        per_sample = self.alpha * tckd + self.beta * nckd
        return self.temperature ** 2 * masked_mean(per_sample, valid)


@register_loss("hard_distillation")
class HardDistillationLoss(nn.Layer):
    """Hard-label distillation (DeiT, Touvron et al. ICML 2021): cross-entropy of the student's logits with the
    teacher's predicted class, averaged over samples (or positions):

        L = -log softmax(z_s)_k,  k = argmax z_t   (the first maximum on ties)

    The target carries no gradient and no temperature. DeiT trains its distillation token this way.

        - {student: head_dist, teacher: $output, loss: HardDistillationLoss}
    """
    uses_label = False
    same_shape = True
    pair_arity = 1

    def __init__(self, axis=1):
        super().__init__()
        self.axis = int(axis)

    def forward(self, student, teacher, label=None):
        s, t = classes_last(student, self.axis), classes_last(teacher, self.axis)
        target = F.one_hot(t.argmax(axis=-1), s.shape[-1]).astype(s.dtype)
        return masked_mean(-(target * log_softmax(s, axis=-1)).sum(axis=-1))
