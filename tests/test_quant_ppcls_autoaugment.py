"""PaddleClas's AutoAugment (ImageNet policy), which its *_quantization.yaml configs train with: the policy table
and magnitude rows as PaddleClas 2.6 writes them, each op against NumPy, and whole calls against a NumPy
reference that makes PaddleClas's random draws in PaddleClas's order."""
import random

import numpy as np
import pytest
from PIL import Image

from slim.distill.errors import ConfigError
from slim.tasks.ppcls import autoaugment as aa
from slim.tasks.ppcls.data import Compose

# ppcls/data/preprocess/ops/autoaugment.py ImageNetPolicy (PaddleClas 2.6), copied as data
PADDLECLAS_POLICY = [
    (0.4, "posterize", 8, 0.6, "rotate", 9), (0.6, "solarize", 5, 0.6, "autocontrast", 5),
    (0.8, "equalize", 8, 0.6, "equalize", 3), (0.6, "posterize", 7, 0.6, "posterize", 6),
    (0.4, "equalize", 7, 0.2, "solarize", 4), (0.4, "equalize", 4, 0.8, "rotate", 8),
    (0.6, "solarize", 3, 0.6, "equalize", 7), (0.8, "posterize", 5, 1.0, "equalize", 2),
    (0.2, "rotate", 3, 0.6, "solarize", 8), (0.6, "equalize", 8, 0.4, "posterize", 6),
    (0.8, "rotate", 8, 0.4, "color", 0), (0.4, "rotate", 9, 0.6, "equalize", 2),
    (0.0, "equalize", 7, 0.8, "equalize", 8), (0.6, "invert", 4, 1.0, "equalize", 8),
    (0.6, "color", 4, 1.0, "contrast", 8), (0.8, "rotate", 8, 1.0, "color", 2),
    (0.8, "color", 8, 0.8, "solarize", 7), (0.4, "sharpness", 7, 0.6, "invert", 8),
    (0.6, "shearX", 5, 1.0, "equalize", 9), (0.4, "color", 0, 0.6, "equalize", 3),
    (0.4, "equalize", 7, 0.2, "solarize", 4), (0.6, "solarize", 5, 0.6, "autocontrast", 5),
    (0.6, "invert", 4, 1.0, "equalize", 8), (0.6, "color", 4, 1.0, "contrast", 8),
    (0.8, "equalize", 8, 0.6, "equalize", 3),
]
# its `ranges`, written out (index 0..9)
PADDLECLAS_MAGNITUDES = {
    "shearX": [0.3 * i / 9 for i in range(10)], "translateX": [150 / 331 * i / 9 for i in range(10)],
    "rotate": [30 * i / 9 for i in range(10)], "color": [0.9 * i / 9 for i in range(10)],
    "posterize": [8, 8, 7, 7, 6, 6, 5, 5, 4, 4], "solarize": [256 - 256 * i / 9 for i in range(10)],
}


def image(h=17, w=23, seed=0):
    return np.random.RandomState(seed).randint(0, 256, size=(h, w, 3)).astype(np.uint8)


# ----- NumPy references (PIL's integer arithmetic: float32 blends truncated, ITU-R 601 gray with rounding) --------
def gray(x):
    x = x.astype(np.int64)
    return ((x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 0x8000) >> 16).astype(np.uint8)


def blend(degenerate, x, factor):
    a = np.float32(factor)
    v = degenerate.astype(np.float32) + a * (x.astype(np.float32) - degenerate.astype(np.float32))
    return np.clip(np.trunc(v), 0, 255).astype(np.uint8)


def per_channel(x, lut_of):
    out = np.empty_like(x)
    for c in range(x.shape[2]):
        out[..., c] = lut_of(np.bincount(x[..., c].ravel(), minlength=256))[x[..., c]]
    return out


def autocontrast_lut(hist):
    lo, hi = np.nonzero(hist)[0][[0, -1]]
    if hi <= lo:
        return np.arange(256)
    scale = 255.0 / (hi - lo)
    return np.clip([int(i * scale - lo * scale) for i in range(256)], 0, 255)


def equalize_lut(hist):
    step = (hist.sum() - hist[np.nonzero(hist)[0][-1]]) // 255
    if not step:
        return np.arange(256)
    n, lut = step // 2, []
    for count in hist:
        lut.append(min(n // step, 255))
        n += count
    return np.array(lut)


NUMPY_OPS = {
    "invert": lambda x, m, sign: 255 - x,
    "posterize": lambda x, m, sign: x & np.uint8(~(2 ** (8 - int(m)) - 1) & 0xFF),
    "solarize": lambda x, m, sign: np.where(x < m, x, 255 - x).astype(np.uint8),
    "autocontrast": lambda x, m, sign: per_channel(x, autocontrast_lut),
    "equalize": lambda x, m, sign: per_channel(x, equalize_lut),
    "brightness": lambda x, m, sign: blend(np.zeros_like(x), x, 1 + m * sign()),
    "color": lambda x, m, sign: blend(np.repeat(gray(x)[..., None], 3, -1), x, 1 + m * sign()),
    "contrast": lambda x, m, sign: blend(np.full_like(x, int(gray(x).mean() + 0.5)), x, 1 + m * sign()),
}


def test_policy_table_and_magnitudes_are_paddleclas_s():
    assert [tuple(row) for row in aa.POLICY] == PADDLECLAS_POLICY
    for op, values in PADDLECLAS_MAGNITUDES.items():
        np.testing.assert_allclose(np.asarray(aa.MAGNITUDES[op], dtype=np.float64), values, rtol=1e-12)
    assert set(aa.OPS) == set(aa.MAGNITUDES) and len(aa.AutoAugment().policies) == 25


@pytest.mark.parametrize("op", sorted(NUMPY_OPS))
def test_pixel_op_equals_numpy(op):
    x = image()
    for index in (0, 4, 9):
        m = aa.MAGNITUDES[op][index]
        for seed in (1, 2):  # the random sign of the enhance ops: the same draw on both sides
            random.seed(seed)
            got = np.asarray(aa.OPS[op](Image.fromarray(x), m))
            rng = random.Random(seed)
            np.testing.assert_array_equal(got, NUMPY_OPS[op](x, m, lambda: rng.choice([-1, 1])), err_msg=f"{op} {index}")


@pytest.mark.parametrize("op,axis", [("translateX", 1), ("translateY", 0)])
def test_translate_shifts_by_the_magnitude_and_fills_gray(op, axis):
    # 331 px along the axis: magnitude index 3 is a shift of 150/331 * 3/9 * 331 = 50 px
    shape = (6, 331, 3) if axis == 1 else (331, 6, 3)
    x = image(*shape[:2], seed=3)
    for seed in range(4):
        random.seed(seed)
        sign = random.Random(seed).choice([-1, 1])
        got = np.asarray(aa.OPS[op](Image.fromarray(x), aa.MAGNITUDES[op][3]))
        want = np.full_like(x, 128)
        n = shape[axis]
        src = np.arange(n) + 50 * sign  # output position i shows input position i + offset
        ok = (src >= 0) & (src < n)
        if axis == 1:
            want[:, ok] = x[:, src[ok]]
        else:
            want[ok] = x[src[ok]]
        np.testing.assert_array_equal(got, want)


def test_shear_x_moves_rows_by_the_magnitude_bicubic_and_fills_gray():
    h, w = 40, 40
    rows = np.random.RandomState(4).randint(0, 256, size=(h, 1, 3)).astype(np.uint8)
    x = np.repeat(rows, w, axis=1)  # constant along x: the bicubic resampling of each row is exact
    m = aa.MAGNITUDES["shearX"][5]
    for seed in range(4):
        random.seed(seed)
        sign = random.Random(seed).choice([-1, 1])
        got = np.asarray(aa.OPS["shearX"](Image.fromarray(x), m)).astype(int)
        for y in range(h):
            src = np.arange(w) + 0.5 + m * sign * (y + 0.5)  # output x samples input x + m*y (pixel centres)
            inside, outside = (src > 3) & (src < w - 3), (src < -3) | (src > w + 3)
            np.testing.assert_array_equal(got[y, inside], np.broadcast_to(rows[y, 0], (inside.sum(), 3)))
            assert (got[y, outside] == 128).all()
        assert outside.any()  # the last row moved by m * 39.5 = 6.6 px, partly out of the image


def test_rotate_turns_by_plus_magnitude_with_gray_corners():
    x = np.zeros((41, 41, 3), np.uint8)
    x[20, 25:] = 255  # a ray from the centre to the right edge
    got = np.asarray(aa.OPS["rotate"](Image.fromarray(x), aa.MAGNITUDES["rotate"][9]))  # 30 degrees
    assert (got[0, 0] == 128).all() and (got[-1, -1] == 128).all() and (got[20, 20] == 0).all()
    ys, xs = np.nonzero(got[..., 0] == 255)
    angle = np.degrees(np.arctan2(20 - ys, xs - 20)).mean()  # counter-clockwise, as PIL's rotate(+30)
    assert angle == pytest.approx(30, abs=3)


def reference(x, seed):
    """PaddleClas's draws with NumPy ops: policy by randint, each step by random() < p, signs by choice."""
    rng = random.Random(seed)
    row = PADDLECLAS_POLICY[rng.randint(0, 24)]
    for p, op, index in (row[:3], row[3:]):
        if rng.random() < p:
            if op not in NUMPY_OPS:
                return None
            magnitude = np.asarray(aa.MAGNITUDES[op])[index]
            x = NUMPY_OPS[op](x, magnitude, lambda: rng.choice([-1, 1]))
    return x


def test_whole_op_makes_paddleclas_s_draws_in_its_order():
    op = Compose([{"AutoAugment": None}], "DataLoader.Train.dataset.transform_ops")
    x, compared, changed = image(24, 24, seed=5), 0, 0
    for seed in range(60):
        want = reference(x, seed)
        if want is None:
            continue  # a geometric or sharpness step ran: checked by its own test above
        random.seed(seed)
        got = op.ops[0](x)
        np.testing.assert_array_equal(got, want, err_msg=f"seed {seed}")
        compared += 1
        changed += int(not np.array_equal(got, x))
    assert compared >= 25 and changed >= 15


def test_arguments_and_normalised_input_are_errors():
    with pytest.raises(ConfigError, match="takes no arguments"):
        Compose([{"AutoAugment": {"policy": "cifar"}}], "transform_ops")
    with pytest.raises(ConfigError, match="before NormalizeImage"):
        aa.AutoAugment()(np.zeros((4, 4, 3), np.float32))
