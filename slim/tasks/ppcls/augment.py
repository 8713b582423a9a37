"""PaddleClas's TimmAutoAugment (its RandAugment form) and RandomErasing, as its ImageNet configs write them:

    - TimmAutoAugment: {config_str: rand-m9-mstd0.5-inc1, interpolation: bicubic, img_size: 224}   # on the uint8 image
    - NormalizeImage: {...}
    - RandomErasing: {EPSILON: 0.25, sl: 0.02, sh: 1.0/3.0, r1: 0.3, attempt: 10, use_log_aspect: True, mode: pixel}

TimmAutoAugment `rand-...` (RandAugment as timm defines it, which PaddleClas wraps): `n` ops (default 2) drawn
from the list (the "increasing" list with `inc1`), uniformly with replacement (or without, by the weights `w0`);
each op applies with probability 0.5 at magnitude `m` (default 10 of 10), drawn from N(m, mstd) and clipped to
[0, 10] when `mstd` is given. Geometric ops fill with the mean colour and resample with `interpolation`
(`random`: bilinear or bicubic per op). `prob` (default 1) is the chance the whole op runs. Only `rand-` strings
are supported (`auto-`/`augmix-` are errors). `inc0` means the plain list here (timm reads any `inc` as on).

RandomErasing (Zhong et al.): with probability EPSILON, up to `attempt` tries draw an area share in [sl, sh] and
an aspect ratio in [r1, 1/r1] (log-uniform with use_log_aspect); the first box that fits is filled with `mean`
(mode const), one N(0, 1) value per channel (rand) or N(0, 1) per pixel (pixel). It works on the normalised
image, HWC or CHW (PaddleClas treats every numpy image as HWC).

Randomness uses Python's `random` and numpy's global generator, both seeded per sample by the trainer.
"""
import math
import random
import re

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from slim.distill.errors import ConfigError
from .config import number

MAX_LEVEL = 10.0
IMAGENET_MEAN = (0.485, 0.456, 0.406)


def _negate(value):
    return -value if random.random() > 0.5 else value


# level (0..10) -> the op's arguments, as timm's RandAugment scales them
LEVELS = {
    "AutoContrast": None, "Equalize": None, "Invert": None,
    "Rotate": lambda lv, hp: (_negate(lv / MAX_LEVEL * 30.0),),
    "Posterize": lambda lv, hp: (int(lv / MAX_LEVEL * 4),),
    "PosterizeIncreasing": lambda lv, hp: (4 - int(lv / MAX_LEVEL * 4),),
    "Solarize": lambda lv, hp: (int(lv / MAX_LEVEL * 256),),
    "SolarizeIncreasing": lambda lv, hp: (256 - int(lv / MAX_LEVEL * 256),),
    "SolarizeAdd": lambda lv, hp: (int(lv / MAX_LEVEL * 110),),
    "ShearX": lambda lv, hp: (_negate(lv / MAX_LEVEL * 0.3),),
    "ShearY": lambda lv, hp: (_negate(lv / MAX_LEVEL * 0.3),),
    "TranslateXRel": lambda lv, hp: (_negate(lv / MAX_LEVEL * hp.get("translate_pct", 0.45)),),
    "TranslateYRel": lambda lv, hp: (_negate(lv / MAX_LEVEL * hp.get("translate_pct", 0.45)),),
}
for _name in ("Color", "Contrast", "Brightness", "Sharpness"):
    LEVELS[_name] = lambda lv, hp: (lv / MAX_LEVEL * 1.8 + 0.1,)  # [0.1, 1.9]
    LEVELS[_name + "Increasing"] = lambda lv, hp: (1.0 + _negate(lv / MAX_LEVEL * 0.9),)  # 1 -/+ up to 0.9


def _affine(img, matrix, fill, resample):
    return img.transform(img.size, Image.AFFINE, matrix, resample=resample, fillcolor=fill)


def _solarize_add(img, add, thresh=128):
    lut = [min(255, i + add) if i < thresh else i for i in range(256)]
    return img.point(lut * len(img.getbands()))


GEOMETRIC = {
    "Rotate": lambda img, deg, fill, rs: img.rotate(deg, resample=rs, fillcolor=fill),
    "ShearX": lambda img, f, fill, rs: _affine(img, (1, f, 0, 0, 1, 0), fill, rs),
    "ShearY": lambda img, f, fill, rs: _affine(img, (1, 0, 0, f, 1, 0), fill, rs),
    "TranslateXRel": lambda img, pct, fill, rs: _affine(img, (1, 0, pct * img.size[0], 0, 1, 0), fill, rs),
    "TranslateYRel": lambda img, pct, fill, rs: _affine(img, (1, 0, 0, 0, 1, pct * img.size[1]), fill, rs),
}
PIXEL = {
    "AutoContrast": ImageOps.autocontrast, "Equalize": ImageOps.equalize, "Invert": ImageOps.invert,
    "Posterize": lambda img, bits: img if bits >= 8 else ImageOps.posterize(img, bits),
    "Solarize": ImageOps.solarize, "SolarizeAdd": _solarize_add,
    "Color": lambda img, f: ImageEnhance.Color(img).enhance(f),
    "Contrast": lambda img, f: ImageEnhance.Contrast(img).enhance(f),
    "Brightness": lambda img, f: ImageEnhance.Brightness(img).enhance(f),
    "Sharpness": lambda img, f: ImageEnhance.Sharpness(img).enhance(f),
}
for _name in ("Posterize", "Solarize", "Color", "Contrast", "Brightness", "Sharpness"):
    PIXEL[_name + "Increasing"] = PIXEL[_name]

RAND_OPS = ["AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
            "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"]
RAND_INCREASING_OPS = ["AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
                       "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
                       "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"]
# timm's weights `w0` (by the plain names; the increasing variants take their base op's weight)
CHOICE_WEIGHTS_0 = {"Rotate": 0.3, "ShearX": 0.2, "ShearY": 0.2, "TranslateXRel": 0.1, "TranslateYRel": 0.1,
                    "Color": 0.025, "Sharpness": 0.025, "AutoContrast": 0.025, "Solarize": 0.005,
                    "SolarizeAdd": 0.005, "Contrast": 0.005, "Brightness": 0.005, "Equalize": 0.005,
                    "Posterize": 0.0, "Invert": 0.0}


class AugmentOp:
    """One RandAugment op: applied with probability `prob` at magnitude ~ N(magnitude, magnitude_std) in [0, 10]."""

    def __init__(self, name, magnitude, hparams, prob=0.5):
        self.name, self.magnitude, self.hparams, self.prob = name, float(magnitude), dict(hparams), prob
        self.level = LEVELS[name]
        self.magnitude_std = float(self.hparams.get("magnitude_std", 0) or 0)

    def arguments(self):
        magnitude = self.magnitude
        if self.magnitude_std > 0:
            magnitude = random.gauss(magnitude, self.magnitude_std)
        magnitude = min(MAX_LEVEL, max(0.0, magnitude))
        return self.level(magnitude, self.hparams) if self.level is not None else ()

    def __call__(self, img):
        if self.prob < 1.0 and random.random() > self.prob:
            return img
        args = self.arguments()
        if self.name in GEOMETRIC:
            resample = self.hparams["interpolation"]
            if isinstance(resample, (list, tuple)):
                resample = random.choice(resample)
            return GEOMETRIC[self.name](img, *args, self.hparams["fill"], resample)
        return PIXEL[self.name](img, *args)


def parse_rand_config(config_str):
    """`rand-m9-n2-mstd0.5-inc1-w0` -> dict(magnitude, num_layers, magnitude_std, increasing, weights)."""
    parts = str(config_str).split("-")
    if parts[0] != "rand":
        raise ConfigError(f"TimmAutoAugment config_str {config_str!r}: only RandAugment strings (rand-m9-mstd0.5-inc1) "
                          f"are supported here, not auto-/augmix- policies.")
    out = {"magnitude": MAX_LEVEL, "num_layers": 2, "magnitude_std": 0.0, "increasing": False, "weights": None}
    fields = {"m": ("magnitude", int), "n": ("num_layers", int), "mstd": ("magnitude_std", float),
              "inc": ("increasing", int), "w": ("weights", int)}
    for section in parts[1:]:
        found = re.match(r"^([a-z]+)(\d.*)$", section)
        if not found:
            continue
        key, text = found.groups()
        if key not in fields:
            raise ConfigError(f"TimmAutoAugment config_str {config_str!r}: unknown section {section!r} (known: "
                              f"m, n, mstd, inc, w)")
        try:
            field, kind = fields[key]
            value = kind(text)
        except ValueError:
            raise ConfigError(f"TimmAutoAugment config_str {config_str!r}: {section!r} is not a number") from None
        if key == "w" and value != 0:
            raise ConfigError(f"TimmAutoAugment config_str {config_str!r}: only the weights w0 exist")
        out[field] = bool(value) if key == "inc" else value
    return out


class TimmAutoAugment:
    def __init__(self, config_str="rand-m9-mstd0.5-inc1", interpolation="bicubic", img_size=224, mean=IMAGENET_MEAN,
                 prob=1.0):
        cfg = parse_rand_config(config_str)
        if interpolation and interpolation != "random":
            from .data import pil_method  # (data.py imports this module)
            resample = pil_method(interpolation)
        else:
            resample = (Image.BILINEAR, Image.BICUBIC)
        hparams = {"fill": tuple(min(255, round(255 * float(m))) for m in mean), "interpolation": resample,
                   "magnitude_std": cfg["magnitude_std"]}
        names = RAND_INCREASING_OPS if cfg["increasing"] else RAND_OPS
        self.ops = [AugmentOp(n, cfg["magnitude"], hparams) for n in names]
        self.num_layers, self.prob = cfg["num_layers"], float(prob)
        self.weights = None
        if cfg["weights"] is not None:
            w = np.array([CHOICE_WEIGHTS_0[n.replace("Increasing", "")] for n in names], dtype=np.float64)
            self.weights = w / w.sum()
        # img_size: timm sizes absolute translations by it; RandAugment's translations are relative to the image

    def __call__(self, img):
        if img.dtype != np.uint8:
            raise ConfigError("TimmAutoAugment works on the decoded uint8 image: put it before NormalizeImage.")
        if random.random() >= self.prob:
            return img
        pil = Image.fromarray(np.ascontiguousarray(img))
        chosen = np.random.choice(len(self.ops), self.num_layers, replace=self.weights is None, p=self.weights)
        for i in chosen:
            pil = self.ops[i](pil)
        return np.asarray(pil)


class RandomErasing:
    def __init__(self, EPSILON=0.5, sl=0.02, sh=0.4, r1=0.3, mean=(0.0, 0.0, 0.0), attempt=100,
                 use_log_aspect=False, mode="const"):
        self.epsilon = number(EPSILON, "RandomErasing EPSILON")
        self.sl, self.sh = number(sl, "RandomErasing sl"), number(sh, "RandomErasing sh")
        r1 = number(r1, "RandomErasing r1")
        if not 0 < r1 <= 1 or not 0 <= self.sl <= self.sh:
            raise ConfigError(f"RandomErasing needs 0 < r1 <= 1 and 0 <= sl <= sh, got r1 {r1}, sl {self.sl}, "
                              f"sh {self.sh}")
        self.use_log_aspect = bool(use_log_aspect)
        self.ratio = (math.log(r1), math.log(1 / r1)) if self.use_log_aspect else (r1, 1 / r1)
        self.attempt = int(attempt)
        if mode not in ("const", "rand", "pixel"):
            raise ConfigError(f"RandomErasing mode {mode!r}: use const, rand or pixel")
        self.mode, self.mean = mode, np.asarray(mean, dtype=np.float32)

    def _pixels(self, h, w, c, chw):
        shape = {"const": (c, 1, 1), "rand": (c, 1, 1), "pixel": (c, h, w)}[self.mode]
        values = (np.broadcast_to(self.mean.reshape(-1, 1, 1)[:c], shape) if self.mode == "const"
                  else np.random.normal(size=shape))
        return values if chw else np.transpose(values, (1, 2, 0))

    def erase(self, img, chw):
        if img.dtype == np.uint8:
            raise ConfigError("RandomErasing works on the normalised image: put it after NormalizeImage.")
        if random.random() > self.epsilon:
            return img
        img_h, img_w, c = (img.shape[1], img.shape[2], img.shape[0]) if chw else img.shape
        for _ in range(self.attempt):
            target = random.uniform(self.sl, self.sh) * img_h * img_w
            aspect = random.uniform(*self.ratio)
            if self.use_log_aspect:
                aspect = math.exp(aspect)
            h = int(round(math.sqrt(target * aspect)))
            w = int(round(math.sqrt(target / aspect)))
            if w < img_w and h < img_h:
                pixels = self._pixels(h, w, c, chw)
                top, left = random.randint(0, img_h - h), random.randint(0, img_w - w)
                img = np.array(img, copy=True)
                if chw:
                    img[:, top:top + h, left:left + w] = pixels
                else:
                    img[top:top + h, left:left + w, :] = pixels
                return img
        return img
