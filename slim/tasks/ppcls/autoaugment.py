"""PaddleClas's `AutoAugment` op: the ImageNet policy of AutoAugment (Cubuk et al. 2019), as PaddleClas runs it.

    transform_ops:
      - DecodeImage: {to_rgb: True, channel_first: False}
      - RandCropImage: {size: 224}
      - RandFlipImage: {flip_code: 1}
      - AutoAugment:                        # on the decoded uint8 image, before NormalizeImage
      - NormalizeImage: {...}

Each call picks one of the 25 sub-policies of POLICY uniformly (`random.randint`); a sub-policy is two
(probability, op, magnitude index) steps, each applied when `random.random() < probability`. Magnitude
index i (0..9) reads the op's row of MAGNITUDES. As in PaddleClas (ppcls/data/preprocess/ops/autoaugment.py,
after DeepVoltaire's AutoAugment):

    shearX/Y       affine shear by +-m (sign drawn per call), bicubic, filled with (128, 128, 128)
    translateX/Y   shift by +-m x the width/height (nearest), filled with (128, 128, 128)
    rotate         +m degrees (no sign drawn), nearest, corners filled with gray 128 (through RGBA)
    color, contrast, brightness, sharpness   PIL's ImageEnhance with factor 1 +- m
    posterize      keep m bits; solarize: invert the values >= m; autocontrast, equalize, invert

Randomness is Python's `random` (policy, probabilities, signs), which the trainer seeds per sample, so the draws
are those PaddleClas makes for the same seed.
"""
import random

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from slim.distill.errors import ConfigError

FILL = (128, 128, 128)
#: magnitude of index 0..9 per op (PaddleClas's `ranges`)
MAGNITUDES = {
    "shearX": np.linspace(0, 0.3, 10),
    "shearY": np.linspace(0, 0.3, 10),
    "translateX": np.linspace(0, 150 / 331, 10),
    "translateY": np.linspace(0, 150 / 331, 10),
    "rotate": np.linspace(0, 30, 10),
    "color": np.linspace(0.0, 0.9, 10),
    "posterize": np.round(np.linspace(8, 4, 10), 0).astype(np.int_),
    "solarize": np.linspace(256, 0, 10),
    "contrast": np.linspace(0.0, 0.9, 10),
    "sharpness": np.linspace(0.0, 0.9, 10),
    "brightness": np.linspace(0.0, 0.9, 10),
    "autocontrast": [0] * 10,
    "equalize": [0] * 10,
    "invert": [0] * 10,
}
#: the ImageNet policy: (p1, op1, magnitude index 1, p2, op2, magnitude index 2), PaddleClas's order
POLICY = (
    (0.4, "posterize", 8, 0.6, "rotate", 9),
    (0.6, "solarize", 5, 0.6, "autocontrast", 5),
    (0.8, "equalize", 8, 0.6, "equalize", 3),
    (0.6, "posterize", 7, 0.6, "posterize", 6),
    (0.4, "equalize", 7, 0.2, "solarize", 4),
    (0.4, "equalize", 4, 0.8, "rotate", 8),
    (0.6, "solarize", 3, 0.6, "equalize", 7),
    (0.8, "posterize", 5, 1.0, "equalize", 2),
    (0.2, "rotate", 3, 0.6, "solarize", 8),
    (0.6, "equalize", 8, 0.4, "posterize", 6),
    (0.8, "rotate", 8, 0.4, "color", 0),
    (0.4, "rotate", 9, 0.6, "equalize", 2),
    (0.0, "equalize", 7, 0.8, "equalize", 8),
    (0.6, "invert", 4, 1.0, "equalize", 8),
    (0.6, "color", 4, 1.0, "contrast", 8),
    (0.8, "rotate", 8, 1.0, "color", 2),
    (0.8, "color", 8, 0.8, "solarize", 7),
    (0.4, "sharpness", 7, 0.6, "invert", 8),
    (0.6, "shearX", 5, 1.0, "equalize", 9),
    (0.4, "color", 0, 0.6, "equalize", 3),
    (0.4, "equalize", 7, 0.2, "solarize", 4),
    (0.6, "solarize", 5, 0.6, "autocontrast", 5),
    (0.6, "invert", 4, 1.0, "equalize", 8),
    (0.6, "color", 4, 1.0, "contrast", 8),
    (0.8, "equalize", 8, 0.6, "equalize", 3),
)


def _sign():
    return random.choice([-1, 1])


def _rotate_with_fill(img, degrees):
    rotated = img.convert("RGBA").rotate(degrees)
    return Image.composite(rotated, Image.new("RGBA", rotated.size, (128,) * 4), rotated).convert(img.mode)


def _affine(img, matrix, resample=None):
    if resample is None:
        return img.transform(img.size, Image.AFFINE, matrix, fillcolor=FILL)
    return img.transform(img.size, Image.AFFINE, matrix, resample, fillcolor=FILL)


# op name -> f(PIL image, magnitude); signs are drawn inside, at call time, as PaddleClas draws them
OPS = {
    "shearX": lambda img, m: _affine(img, (1, m * _sign(), 0, 0, 1, 0), Image.BICUBIC),
    "shearY": lambda img, m: _affine(img, (1, 0, 0, m * _sign(), 1, 0), Image.BICUBIC),
    "translateX": lambda img, m: _affine(img, (1, 0, m * img.size[0] * _sign(), 0, 1, 0)),
    "translateY": lambda img, m: _affine(img, (1, 0, 0, 0, 1, m * img.size[1] * _sign())),
    "rotate": _rotate_with_fill,
    "color": lambda img, m: ImageEnhance.Color(img).enhance(1 + m * _sign()),
    "posterize": lambda img, m: ImageOps.posterize(img, int(m)),
    "solarize": lambda img, m: ImageOps.solarize(img, m),
    "contrast": lambda img, m: ImageEnhance.Contrast(img).enhance(1 + m * _sign()),
    "sharpness": lambda img, m: ImageEnhance.Sharpness(img).enhance(1 + m * _sign()),
    "brightness": lambda img, m: ImageEnhance.Brightness(img).enhance(1 + m * _sign()),
    "autocontrast": lambda img, m: ImageOps.autocontrast(img),
    "equalize": lambda img, m: ImageOps.equalize(img),
    "invert": lambda img, m: ImageOps.invert(img),
}


class SubPolicy:
    """Two steps: op1 with probability p1 at MAGNITUDES[op1][i1], then op2 likewise."""

    def __init__(self, p1, op1, i1, p2, op2, i2):
        self.steps = [(float(p1), op1, MAGNITUDES[op1][i1]), (float(p2), op2, MAGNITUDES[op2][i2])]

    def __call__(self, img):
        for p, op, magnitude in self.steps:
            if random.random() < p:
                img = OPS[op](img, magnitude)
        return img


class AutoAugment:
    """PaddleClas's `AutoAugment` (no arguments): one random ImageNet sub-policy per image, on the uint8 HWC
    image (a PIL image is accepted too and returned as one)."""

    def __init__(self, **kwargs):
        if kwargs:
            raise ConfigError(f"AutoAugment takes no arguments in PaddleClas (its ImageNet policy); remove "
                              f"{', '.join(sorted(kwargs))}.")
        self.policies = [SubPolicy(*row) for row in POLICY]

    def __call__(self, img, policy_idx=None):
        pil = img if isinstance(img, Image.Image) else None
        if pil is None:
            if img.dtype != np.uint8:
                raise ConfigError("AutoAugment works on the decoded uint8 image: put it before NormalizeImage.")
            pil = Image.fromarray(np.ascontiguousarray(img))
        index = random.randint(0, len(self.policies) - 1) if policy_idx is None else policy_idx % len(self.policies)
        out = self.policies[index](pil)
        return out if isinstance(img, Image.Image) else np.asarray(out)

    def __repr__(self):
        return "AutoAugment ImageNet Policy"
