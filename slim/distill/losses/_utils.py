"""Small pieces shared by the losses: class axis handling, ignore_index masking, pooling, smooth L1."""
import paddle
import paddle.nn.functional as F


def classes_last(x, axis):
    """Move the class axis last and flatten every other axis: (N, C, H, W) -> (N*H*W, C)."""
    axis = axis % x.ndim
    if axis != x.ndim - 1:
        x = x.transpose([i for i in range(x.ndim) if i != axis] + [axis])
    return x.reshape([-1, x.shape[-1]])


def flat_label(label, logits, axis):
    """The label as a flat int64 vector matching the rows of `classes_last(logits, axis)`.

    Accepts (N,), (N, H, W) or (N, 1, H, W) labels; a label whose spatial size differs from the
    logits' is resized with nearest interpolation.
    """
    axis = axis % logits.ndim
    spatial = [s for i, s in enumerate(logits.shape) if i != axis][1:]
    if label.ndim == logits.ndim:  # the label keeps a singleton class axis
        label = label.squeeze(axis)
    if spatial and list(label.shape[1:]) != spatial:
        x = label.unsqueeze(1).astype("float32")  # (N, 1, *spatial); exact for any label < 2^24
        size = list(spatial)
        if len(spatial) == 1:  # nearest interpolation needs 2 or 3 spatial axes
            x, size = x.unsqueeze(-1), size + [1]
        x = F.interpolate(x, size=size, mode="nearest")
        label = x.reshape([x.shape[0]] + list(spatial))
    return label.reshape([-1]).astype("int64")


def valid_mask(label, logits, axis, ignore_index):
    """(flat int64 label, bool mask of the positions whose label is not ignore_index)."""
    flat = flat_label(label, logits, axis)
    return flat, flat != ignore_index


def masked_mean(values, valid=None):
    """Mean of `values` over the positions where `valid` is true (all when `valid` is None).

    With no valid position the result is 0 and still depends on `values`, so backward() works.
    """
    if valid is None:
        return values.mean()
    kept = paddle.where(valid, values, paddle.zeros_like(values))
    count = valid.astype(values.dtype).sum()
    return kept.sum() / paddle.clip(count, min=1.0)


def standardize_rows(x, eps=1e-7):
    """Logit standardisation (Sun et al., CVPR 2024): each row z -> (z - mean(z)) / (std(z) + eps), with the
    sample standard deviation (ddof 1) as the authors' code computes it."""
    mean = x.mean(axis=-1, keepdim=True)
    std = paddle.std(x, axis=-1, keepdim=True, unbiased=True)
    return (x - mean) / (std + eps)


def log_softmax(x, axis=-1):
    """x - logsumexp(x) along `axis`.

    Paddle 3.3's CPU `F.log_softmax` is about 15x slower than this on (4096, 1024) inputs (and far
    slower along axis 0), and it clips its output at -64; this form is exact and fast on every device.
    """
    return x - paddle.logsumexp(x, axis=axis, keepdim=True)


def kl_rows_from_logits(teacher, student):
    """KL(softmax(teacher) || softmax(student)) for each row of (M, K) logits.

    Written as sum_k p_t,k (t_k - s_k) - lse(t) + lse(s) (sum_k p_t,k = 1): the student side needs one
    logsumexp and no log-softmax tensor, which is most of the work saved on large maps.
    """
    p_t = F.softmax(teacher, axis=-1)
    return ((p_t * (teacher - student)).sum(axis=-1) - paddle.logsumexp(teacher, axis=-1)
            + paddle.logsumexp(student, axis=-1))


def kl_rows(log_p, log_q):
    """KL(p || q) = sum_k p_k (log p_k - log q_k) for each row of log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(axis=-1)


def pool_to_common(a, b):
    """Adaptive-average-pool (N, C, H, W) maps to the smaller of their heights and widths."""
    size = [min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3])]
    if list(a.shape[2:]) != size:
        a = F.adaptive_avg_pool2d(a, size)
    if list(b.shape[2:]) != size:
        b = F.adaptive_avg_pool2d(b, size)
    return a, b


def smooth_l1(diff, beta=1.0):
    """Elementwise 0.5 d^2 / beta where |d| < beta, else |d| - 0.5 beta."""
    a = diff.abs()
    return paddle.where(a < beta, 0.5 * diff * diff / beta, a - 0.5 * beta)
