"""PaddleClas's `batch_transform_ops`: operators that mix the samples of a training batch, with soft targets.

    DataLoader:
      Train:
        dataset:
          name: ImageNetDataset
          ...
          batch_transform_ops:
            - OpSampler:                       # one of them per batch, by probability (none: 1 - the sum)
                MixupOperator: {alpha: 0.8, prob: 0.5}
                CutmixOperator: {alpha: 1.0, prob: 0.5}

The operators draw as PaddleClas's (ppcls/data/preprocess/batch_ops/batch_operators.py) draw, in the same order,
so the same generator states give the same batch:

| operator | draws | images | target |
| --- | --- | --- | --- |
| MixupOperator (alpha 1) | perm = np.random.permutation(N), lam = np.random.beta(alpha, alpha) | lam x + (1 - lam) x[perm] | lam onehot(y) + (1 - lam) onehot(y[perm]) |
| CutmixOperator (alpha 0.2) | perm, lam = beta(alpha, alpha), then a box: cut = int(side x sqrt(1 - lam)) on each axis, centre np.random.randint on H (axis 2) then W, clipped | the box copied from x[perm] | lam = 1 - box area / (H W) |
| FmixOperator (alpha 1, decay_power 3, max_soft 0, reformulate False) | perm, lam = beta(alpha, alpha) (beta(alpha + 1, alpha) reformulated), a low-frequency image from np.random.randn in Fourier space, Python random.random() for rounding | mask x + (1 - mask) x[perm], the mask the top lam share of that image | lam |
| OpSampler | random.choices(ops + [none], weights=[prob..., 1 - sum]) (Python random) | the chosen operator's | |

A batch the operators did not mix keeps its integer labels; a mixed one has float32 (N, class_num) targets, which
the losses read as soft labels (CELoss as PaddleClas: label smoothing with epsilon, else the softmax of the
target). FMix: PaddleClas mixes with a float64 mask (its batch comes out float64); here the images stay float32.
The teacher of a DistillationModel sees the mixed images, as the student does.

Each batch's draws are seeded from the data seed and the batch's samples (slim/engine/data.py), so a batch is mixed
the same way whatever the number of loader workers, on resume, and in a run that reads a teacher cache.
"""
import math
import random

import numpy as np

from slim.distill.errors import ConfigError


class BatchOperator:
    """Mixes a batch: (images (N, C, H, W) float32, integer labels (N,)) -> (images, targets (N, class_num))."""

    def __init__(self, class_num, alpha):
        if not class_num:
            raise ConfigError(f"{type(self).__name__} needs the number of classes: set Arch.class_num.")
        if alpha <= 0:
            raise ConfigError(f"{type(self).__name__} alpha must be > 0, got {alpha}")
        self.class_num, self.alpha = int(class_num), float(alpha)

    def _targets(self, labels, perm, lam):
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ConfigError(f"{type(self).__name__} mixes integer labels, but this batch's are already mixed (two "
                              f"mixing operators in batch_transform_ops): keep one, or sample one with OpSampler.")
        if labels.min() < 0 or labels.max() >= self.class_num:
            raise ConfigError(f"{type(self).__name__}: labels {sorted(set(labels.tolist()))[:5]} outside "
                              f"[0, {self.class_num - 1}] (Arch.class_num {self.class_num}).")
        eye = np.eye(self.class_num, dtype="float32")
        return eye[labels] * lam + eye[labels[perm]] * (1 - lam)


class MixupOperator(BatchOperator):
    """Mixup (Zhang et al., ICLR 2018): the batch blended with a permutation of itself."""

    def __init__(self, class_num, alpha=1.0):
        super().__init__(class_num, alpha)

    def __call__(self, images, labels):
        perm = np.random.permutation(len(images))
        lam = np.random.beta(self.alpha, self.alpha)
        mixed = (lam * images + (1 - lam) * images[perm]).astype(images.dtype)
        return mixed, self._targets(labels, perm, lam)


def cutmix_box(height, width, lam):
    """PaddleClas's box: sides int(side x sqrt(1 - lam)), a centre drawn on axis 2 then axis 3, clipped."""
    cut_rat = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut_rat), int(width * cut_rat)
    cy, cx = np.random.randint(height), np.random.randint(width)
    y1, y2 = np.clip(cy - cut_h // 2, 0, height), np.clip(cy + cut_h // 2, 0, height)
    x1, x2 = np.clip(cx - cut_w // 2, 0, width), np.clip(cx + cut_w // 2, 0, width)
    return int(y1), int(y2), int(x1), int(x2)


class CutmixOperator(BatchOperator):
    """CutMix (Yun et al., ICCV 2019): a box of each image replaced by the same box of another."""

    def __init__(self, class_num, alpha=0.2):
        super().__init__(class_num, alpha)

    def __call__(self, images, labels):
        perm = np.random.permutation(len(images))
        lam = np.random.beta(self.alpha, self.alpha)
        height, width = images.shape[2], images.shape[3]
        y1, y2, x1, x2 = cutmix_box(height, width, lam)
        mixed = images.copy()
        mixed[:, :, y1:y2, x1:x2] = images[perm, :, y1:y2, x1:x2]
        lam = 1 - float((y2 - y1) * (x2 - x1)) / (height * width)
        return mixed, self._targets(labels, perm, lam)


def low_frequency_image(height, width, decay_power):
    """A random low-frequency image (FMix, Harris et al. 2020) scaled to [0, 1], drawn as PaddleClas (and FMix's
    code) draw it: Gaussian values (1, H, F, 2) on the frequency grid of an (H, W) real signal (F = W // 2 + 1
    columns, W // 2 + 2 for an odd W), scaled by 1 / max(f, 1 / max(H, W))^decay; the complex spectrum is then
    taken from the grid's first two rows (spectrum[:, 0] + 1j spectrum[:, 1], as that code indexes it) and
    inverted to (H, W) by irfftn, which crops or zero-pads it."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.fftfreq(width)[:width // 2 + (2 if width % 2 else 1)]
    freqs = np.sqrt(fx * fx + fy * fy)
    scale = 1.0 / np.maximum(freqs, 1.0 / max(height, width)) ** decay_power
    param = np.random.randn(1, *freqs.shape, 2)
    spectrum = scale[None, :, :, None] * param
    image = np.real(np.fft.irfftn(spectrum[:, 0] + 1j * spectrum[:, 1], (height, width)))[:1, :height, :width]
    image = image - image.min()
    return image / image.max()


def binary_mask(image, lam, max_soft=0.0):
    """1 on the top lam share of `image`'s values (the count rounded up or down by a coin), 0 elsewhere, with an
    optional linear ramp of max_soft x size values between them; shape (1, 1, H, W)."""
    height, width = image.shape[-2:]
    order = image.reshape(-1).argsort()[::-1]
    mask = image.reshape(-1).copy()
    num = math.ceil(lam * mask.size) if random.random() > 0.5 else math.floor(lam * mask.size)
    soft = max_soft if max_soft <= lam and max_soft <= 1 - lam else min(lam, 1 - lam)
    soft = int(mask.size * soft)
    low, high = int(num - soft), int(num + soft)
    mask[order[:high]] = 1
    mask[order[low:]] = 0
    mask[order[low:high]] = np.linspace(1, 0, high - low)
    return mask.reshape(1, 1, height, width)


class FmixOperator(BatchOperator):
    """FMix (Harris et al., 2020): images blended through a binary mask cut from a low-frequency random image."""

    def __init__(self, class_num, alpha=1.0, decay_power=3, max_soft=0.0, reformulate=False):
        super().__init__(class_num, alpha)
        self.decay_power, self.max_soft, self.reformulate = float(decay_power), float(max_soft), bool(reformulate)

    def __call__(self, images, labels):
        perm = np.random.permutation(len(images))
        a = self.alpha
        lam = float(np.random.beta(a + 1, a) if self.reformulate else np.random.beta(a, a))
        image = low_frequency_image(images.shape[2], images.shape[3], self.decay_power)
        mask = binary_mask(image, lam, self.max_soft)
        mixed = (mask * images + (1 - mask) * images[perm]).astype(images.dtype)
        return mixed, self._targets(labels, perm, lam)


OPERATORS = {c.__name__: c for c in (MixupOperator, CutmixOperator, FmixOperator)}


class OpSampler:
    """One operator per batch, chosen with its `prob` (Python's random.choices); none with 1 - the sum."""

    def __init__(self, class_num, where="OpSampler", log=print, **ops):
        self.ops, self.weights = [], []
        for name, params in ops.items():
            params = dict(params or {})
            if "prob" not in params:
                log(f"{where}: {name} has no prob: it is never chosen (PaddleClas sets it to 0)")
            prob = float(params.pop("prob", 0))
            self.ops.append(build_operator(name, params, class_num, f"{where}.{name}"))
            self.weights.append(prob)
        total = sum(self.weights)
        if total > 1:
            raise ConfigError(f"{where}: the probabilities of its operators add up to {total:g} > 1.")
        self.ops.append(None)  # no mixing
        self.weights.append(1 - total)

    def __call__(self, images, labels):
        op = random.choices(self.ops, weights=self.weights, k=1)[0]
        return op(images, labels) if op is not None else (images, labels)


def build_operator(name, params, class_num, where, log=print):
    if name == "OpSampler":
        return OpSampler(class_num, where, log, **dict(params or {}))
    if name not in OPERATORS:
        raise ConfigError(f"{where}: batch operator {name!r} is not supported; supported: OpSampler, "
                          f"{', '.join(OPERATORS)}. Remove it from batch_transform_ops.")
    try:
        return OPERATORS[name](class_num, **dict(params or {}))
    except TypeError as e:
        raise ConfigError(f"{where}: {name}: {e}") from None


def build_batch_ops(entries, class_num, where, log=print):
    """`batch_transform_ops` (a list of `- Name: {...}`) -> operators applied in order."""
    if not isinstance(entries, list):
        raise ConfigError(f"{where} must be a list of `- OperatorName: {{...}}` items, got {entries!r}")
    ops = []
    for i, item in enumerate(entries):
        if isinstance(item, str):
            item = {item: None}
        if not isinstance(item, dict) or len(item) != 1:
            raise ConfigError(f"{where}.{i}: each item is `- OperatorName: {{...}}`, got {item!r}")
        (name, params), = item.items()
        ops.append(build_operator(name, params, class_num, f"{where}.{i}.{name}", log))
    return ops


def apply_batch_ops(ops, images, labels):
    """The operators in order, as PaddleClas's collate applies them."""
    for op in ops:
        images, labels = op(images, labels)
    return images, labels


class MixingCollate:
    """The training batches' collate with batch_transform_ops: samples stacked, then mixed (numpy and Python random
    seeded per batch by the data loader: `draws_per_batch`); {img, label} with label the int64 class ids of an
    unmixed batch or the float32 (N, class_num) targets of a mixed one."""
    draws_per_batch = True

    def __init__(self, ops):
        self.ops = list(ops)

    def __call__(self, samples):
        import paddle
        errors = [s["error"] for s in samples if "error" in s]
        if errors:  # raised by the task on the main thread (ClsDataset.defer_errors)
            return {"error": errors[0], "placeholder": np.zeros(1, dtype=np.float32)}
        images = np.stack([s["img"] for s in samples]).astype(np.float32, copy=False)
        labels = np.asarray([s["label"] for s in samples], dtype=np.int64)
        images, labels = apply_batch_ops(self.ops, images, labels)
        return {"img": paddle.to_tensor(np.ascontiguousarray(images)), "label": paddle.to_tensor(labels)}
