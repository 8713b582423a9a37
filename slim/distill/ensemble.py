"""Several teachers behind one pair: their tensors combined into the one the loss compares.

    distill_loss: {types: [{type: KLLoss}], coef: [3], ensemble: mean_prob}     # logits of every teacher
    distill:
      - {student: head, teacher: head, loss: L2Loss, ensemble: mean_logit}
      - {student: backbone.bb_2_1, teacher: r101.backbone.bb_2_5, loss: MSELoss, align: 1x1conv}  # one teacher

    mean_logit   the mean of the teachers' tensors (logits or features of one shape)
    mean_prob    log of the mean of the teachers' softmax over the class axis: a distribution-matching loss
                 (KL, DKD, DIST, ...) then sees the ensemble's average probability at temperature 1; with a
                 temperature T the loss softens that average (softmax(log p / T))
    per_teacher  one term per teacher, `<pair>_<teacher>`, each with the pair's weight (PaddleClas's
                 model_name_pairs with several teachers)
"""
import paddle
import paddle.nn.functional as F

from .precision import float32

TINY = 1e-12  # keeps log finite where every teacher gives a class probability 0


def combine(tensors, mode, axis=1):
    """One tensor from several teachers' tensors of one shape (float32)."""
    tensors = [float32(t) for t in tensors]
    if len(tensors) == 1:
        return tensors[0]
    if mode == "mean_logit":
        return paddle.stack(tensors).mean(axis=0)
    if mode == "mean_prob":
        probs = paddle.stack([F.softmax(t, axis=axis) for t in tensors]).mean(axis=0)
        return paddle.log(paddle.clip(probs, min=TINY))
    raise ValueError(f"unknown ensemble {mode!r}")
