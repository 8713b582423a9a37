"""PaddleClas's TimmAutoAugment (RandAugment) and RandomErasing: the config string, each op's argument at a
magnitude and its effect on an image against a direct NumPy computation, RandomErasing's box against the draws
written out here, and both inside a transform_ops list."""
import math
import random

import numpy as np
import pytest
from PIL import Image

from slim.distill.errors import ConfigError
from slim.tasks.ppcls import augment
from slim.tasks.ppcls.data import Compose


def image(h=24, w=20, seed=0):
    return np.random.RandomState(seed).randint(0, 256, size=(h, w, 3)).astype(np.uint8)


def test_config_strings():
    cfg = augment.parse_rand_config("rand-m9-mstd0.5-inc1")
    assert cfg == {"magnitude": 9, "num_layers": 2, "magnitude_std": 0.5, "increasing": True, "weights": None}
    cfg = augment.parse_rand_config("rand-m7-n3-inc0-w0")
    assert (cfg["magnitude"], cfg["num_layers"], cfg["increasing"], cfg["weights"]) == (7, 3, False, 0)
    for bad, message in (("auto-v0", "only RandAugment"), ("rand-m9-x3", "unknown section 'x3'"),
                         ("rand-w1", "only the weights w0")):
        with pytest.raises(ConfigError, match=message):
            augment.parse_rand_config(bad)
    aa = augment.TimmAutoAugment("rand-m9-mstd0.5-inc1")
    assert [op.name for op in aa.ops] == [
        "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd",
        "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY",
        "TranslateXRel", "TranslateYRel"]
    assert aa.ops[3].hparams["fill"] == (124, 116, 104)  # round(255 x ImageNet mean)
    weighted = augment.TimmAutoAugment("rand-m9-w0", interpolation="random")
    assert weighted.weights[3] == pytest.approx(0.3 / 1.0) and weighted.weights[2] == 0.0  # Rotate, Invert
    assert weighted.ops[3].hparams["interpolation"] == (Image.BILINEAR, Image.BICUBIC)


@pytest.mark.parametrize("name, magnitude, expected", [
    ("Rotate", 9, 27.0), ("ShearX", 9, 0.27), ("TranslateYRel", 9, 0.405),
    ("Posterize", 9, 3), ("PosterizeIncreasing", 9, 1), ("Solarize", 9, 230), ("SolarizeIncreasing", 9, 26),
    ("SolarizeAdd", 9, 99), ("Color", 9, 1.72), ("SharpnessIncreasing", 9, 1.81), ("Brightness", 0, 0.1),
    ("ContrastIncreasing", 10, 1.9)])
def test_each_ops_argument_at_a_magnitude(name, magnitude, expected, monkeypatch):
    op = augment.AugmentOp(name, magnitude, {"fill": (0, 0, 0), "interpolation": Image.NEAREST})
    monkeypatch.setattr(random, "random", lambda: 0.0)  # "negate" draws (> 0.5) keep the sign
    (value,) = op.arguments()
    assert value == pytest.approx(expected)
    monkeypatch.setattr(random, "random", lambda: 0.9)
    if name in ("Rotate", "ShearX", "TranslateYRel"):
        assert op.arguments()[0] == pytest.approx(-expected)
    if name.endswith("Increasing") and name.startswith(("Sharpness", "Contrast")):
        assert op.arguments()[0] == pytest.approx(2.0 - expected)


def test_magnitude_noise_is_clipped_to_the_level_range(monkeypatch):
    op = augment.AugmentOp("Solarize", 9, {"magnitude_std": 0.5})
    monkeypatch.setattr(random, "gauss", lambda mu, sigma: mu + 5 * sigma)  # 11.5 -> 10
    assert op.arguments() == (256,)
    monkeypatch.setattr(random, "gauss", lambda mu, sigma: -3.0)  # -> 0
    assert op.arguments() == (0,)


def apply(name, *args, fill=(9, 9, 9)):
    pil = Image.fromarray(image())
    if name in augment.GEOMETRIC:
        return np.asarray(augment.GEOMETRIC[name](pil, *args, fill, Image.NEAREST)).astype(int)
    return np.asarray(augment.PIXEL[name](pil, *args)).astype(int)


def test_each_op_on_an_image_against_numpy():
    x = image().astype(int)
    np.testing.assert_array_equal(apply("Invert"), 255 - x)
    np.testing.assert_array_equal(apply("SolarizeAdd", 99), np.where(x < 128, np.minimum(255, x + 99), x))
    np.testing.assert_array_equal(apply("Solarize", 26), np.where(x >= 26, 255 - x, x))
    np.testing.assert_array_equal(apply("PosterizeIncreasing", 1), x & 0b10000000)
    np.testing.assert_array_equal(apply("Posterize", 8), x)
    assert np.abs(apply("Brightness", 0.5) - x * 0.5).max() <= 1
    grey = (x[..., 0] * 299 + x[..., 1] * 587 + x[..., 2] * 114) / 1000  # ITU-R 601-2 luma, PIL's "L"
    assert np.abs(apply("Color", 0.0) - grey[..., None]).max() <= 1
    shifted = np.full_like(x, 9)  # TranslateXRel 0.25 of 20 px: the content moves 5 px left, the mean fills
    shifted[:, :15] = x[:, 5:]
    np.testing.assert_array_equal(apply("TranslateXRel", 0.25), shifted)
    down = np.full_like(x, 9)  # TranslateYRel -0.25 of 24 px: 6 px down
    down[6:] = x[:-6]
    np.testing.assert_array_equal(apply("TranslateYRel", -0.25), down)
    sheared = np.full_like(x, 9)  # ShearX f: out(x, y) = in(x + f y, y)
    for y in range(x.shape[0]):
        for col in range(x.shape[1]):
            src = col + 0.5 + 0.5 * (y + 0.5)
            if 0 <= src < x.shape[1]:
                sheared[y, col] = x[y, int(math.floor(src))]
    np.testing.assert_array_equal(apply("ShearX", 0.5), sheared)
    square = np.asarray(Image.fromarray(image(20, 20)).rotate(90, resample=Image.NEAREST, fillcolor=(9, 9, 9)))
    np.testing.assert_array_equal(square, np.rot90(image(20, 20)))  # PIL rotates counter-clockwise


def test_timm_autoaugment_is_seeded_by_the_sample_and_keeps_the_image_shape():
    aa = augment.TimmAutoAugment("rand-m9-mstd0.5-inc1", img_size=24)
    outs = []
    for seed in (1, 1, 2):
        random.seed(seed)
        np.random.seed(seed)
        outs.append(aa(image()))
    assert outs[0].shape == (24, 20, 3) and outs[0].dtype == np.uint8
    np.testing.assert_array_equal(outs[0], outs[1])
    assert not all(np.array_equal(o, image()) for o in outs)
    assert np.array_equal(augment.TimmAutoAugment(prob=0.0)(image()), image())
    with pytest.raises(ConfigError, match="before NormalizeImage"):
        aa(image().astype(np.float32))


def expected_box(seed, shape_hw, sl, sh, r1, attempts, use_log):
    """RandomErasing's draws, written out: (top, left, h, w) or None."""
    rng = random.Random(seed)
    if rng.random() > 1.0:
        return None
    img_h, img_w = shape_hw
    lo, hi = (math.log(r1), math.log(1 / r1)) if use_log else (r1, 1 / r1)
    for _ in range(attempts):
        target = rng.uniform(sl, sh) * img_h * img_w
        aspect = rng.uniform(lo, hi)
        aspect = math.exp(aspect) if use_log else aspect
        h, w = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if w < img_w and h < img_h:
            return rng.randint(0, img_h - h), rng.randint(0, img_w - w), h, w
    return None


@pytest.mark.parametrize("chw", [False, True])
def test_random_erasing_fills_the_drawn_box(chw):
    op = augment.RandomErasing(EPSILON=1.0, sl=0.02, sh="1.0/3.0", r1=0.3, mean=[0.5, -1.0, 2.0], attempt=10,
                               use_log_aspect=True)
    img = np.zeros((3, 24, 20) if chw else (24, 20, 3), dtype=np.float32)
    for seed in range(20):
        random.seed(seed)
        out = op.erase(img, chw)
        top, left, h, w = expected_box(seed, (24, 20), 0.02, 1 / 3, 0.3, 10, True)
        hwc = np.transpose(out, (1, 2, 0)) if chw else out
        box = np.zeros((24, 20), dtype=bool)
        box[top:top + h, left:left + w] = True
        np.testing.assert_array_equal(hwc[box], np.tile([0.5, -1.0, 2.0], (box.sum(), 1)))
        assert not hwc[~box].any()
    assert not img.any()  # the input is not written to


def test_random_erasing_modes_probability_and_errors():
    img = np.zeros((64, 64, 3), dtype=np.float32)
    random.seed(0)
    np.random.seed(0)
    out = augment.RandomErasing(EPSILON=1.0, sl=0.5, sh=0.5, mode="pixel").erase(img, False)
    erased = out[out != 0]
    assert erased.size > 0.4 * img.size and abs(erased.mean()) < 0.05 and abs(erased.std() - 1) < 0.05
    out = augment.RandomErasing(EPSILON=1.0, sl=0.5, sh=0.5, mode="rand").erase(img, False)
    assert len(np.unique(out[out != 0])) == 3  # one value per channel
    assert not augment.RandomErasing(EPSILON=0.0).erase(img, False).any()
    random.seed(3)
    hits = sum(augment.RandomErasing(EPSILON=0.25, mean=[1, 1, 1]).erase(img, False).any() for _ in range(400))
    assert 70 <= hits <= 130  # about a quarter of the images
    with pytest.raises(ConfigError, match="after NormalizeImage"):
        augment.RandomErasing().erase(np.zeros((4, 4, 3), np.uint8), False)
    with pytest.raises(ConfigError, match="mode 'x'"):
        augment.RandomErasing(mode="x")


def test_both_in_a_transform_ops_list_as_paddleclas_configs_write_them():
    ops = [{"DecodeImage": {"to_rgb": True, "channel_first": False}},
           {"RandCropImage": {"size": 16, "interpolation": "bicubic", "backend": "pil"}},
           {"RandFlipImage": {"flip_code": 1}},
           {"TimmAutoAugment": {"config_str": "rand-m7-mstd0.5-inc1", "interpolation": "bicubic", "img_size": 16}},
           {"NormalizeImage": {"scale": "1.0/255.0", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                               "order": ""}},
           {"RandomErasing": {"EPSILON": 1.0, "sl": 0.02, "sh": "1.0/3.0", "r1": 0.3, "attempt": 10,
                              "use_log_aspect": True, "mode": "const"}}]
    compose = Compose(ops, "DataLoader.Train.dataset.transform_ops")
    random.seed(0)
    np.random.seed(0)
    out = compose(image(28, 28))
    assert out.shape == (3, 16, 16) and out.dtype == np.float32
    assert (out == 0).all(axis=0).sum() >= 0.02 * 256 - 1  # the erased box holds the mean 0 in every channel
    with pytest.raises(ConfigError, match="before NormalizeImage"):
        Compose([ops[4], ops[3]], "X")(image())
