"""Work-arounds for paddleseg 2.8.0 on Paddle 3, applied once when the segmentation task is imported.

- `CrossEntropyLoss._post_process_loss` multiplies a float32 mask by an int64 tensor; Paddle 3 refuses
  that type promotion. The replacement computes the same quantity with explicit casts.
- paddleseg's own train loop (`core.train`, indexing 0-D losses) and `utils.metrics.calculate_area`
  (concatenating 0-D tensors) also break; this package does not use them (see `metrics.py`).
"""
import paddle
import paddle.nn.functional as F

_PATCHED = False


def _post_process_loss(self, logit, label, semantic_weights, loss):
    """paddleseg's CrossEntropyLoss averaging, with float32 masks and coefficients."""
    valid = label != self.ignore_index
    mask = valid.astype("float32") if self.avg_non_ignore else paddle.ones(label.shape, dtype="float32")
    mask.stop_gradient = True
    label.stop_gradient = True
    if loss.ndim > mask.ndim:
        loss = paddle.squeeze(loss, axis=-1)
    loss = loss * mask
    if semantic_weights is not None:
        loss = loss * semantic_weights
    if self.weight is not None:
        safe_label = label * valid.astype(label.dtype)  # ignored pixels index class 0; their mask is 0
        coef = paddle.sum(F.one_hot(safe_label, logit.shape[-1]) * self.weight, axis=-1)
    else:
        coef = paddle.ones(label.shape, dtype="float32")
    if self.top_k_percent_pixels == 1.0:
        return paddle.mean(loss) / (paddle.mean(mask * coef) + self.EPS)
    loss = loss.reshape((-1,))
    top_k = int(self.top_k_percent_pixels * loss.numel())
    loss, indices = paddle.topk(loss, top_k)
    coef = paddle.gather(coef.reshape((-1,)), indices)
    coef.stop_gradient = True
    return loss.mean() / (paddle.mean(coef) + self.EPS)


def apply():
    global _PATCHED
    if _PATCHED:
        return
    from paddleseg.models.losses import cross_entropy_loss
    cross_entropy_loss.CrossEntropyLoss._post_process_loss = _post_process_loss
    _PATCHED = True
