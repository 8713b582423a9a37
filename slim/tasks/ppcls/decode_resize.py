"""Decoding and resizing as PaddleClas's DecodeImage and UnifiedResize do them: with cv2 unless `backend: pil`.

    - DecodeImage: {to_rgb: True, backend: cv2}          # cv2.imdecode (3 channels), then BGR -> RGB
    - RandCropImage: {size: 32, interpolation: bilinear, backend: cv2}
    - ResizeImage: {resize_short: 36, backend: pil}      # PIL's resize instead

PaddleClas's ops resize with cv2.resize by default (INTER_LINEAR when `interpolation` is not given; a name
maps to cv2's INTER_NEAREST, _LINEAR, _AREA, _CUBIC, _LANCZOS4; a number is cv2's flag; `random` draws
bilinear or bicubic per call with Python's `random`). With `backend: pil` they use PIL (BILINEAR by default;
names nearest, bilinear, bicubic, box, lanczos, hamming, random). The two differ: PIL filters when it shrinks,
cv2's INTER_LINEAR does not, so the same config gives other pixels with the other backend.

Decoding: cv2.imdecode(bytes, IMREAD_COLOR) gives BGR with grey images repeated to 3 channels; PIL's
`convert("RGB")`; `to_rgb: False` keeps BGR (PaddleClas's channel order then).
"""
import random

import cv2
import numpy as np
from PIL import Image

from slim.distill.errors import ConfigError
from slim.tasks.cls.data import truncated_images_refused

BACKENDS = ("cv2", "pil")
_CV2 = {"nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA,
        "bicubic": cv2.INTER_CUBIC, "lanczos": cv2.INTER_LANCZOS4, "random": (cv2.INTER_LINEAR, cv2.INTER_CUBIC)}
_PIL = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "box": Image.BOX,
        "lanczos": Image.LANCZOS, "hamming": Image.HAMMING, "random": (Image.BILINEAR, Image.BICUBIC)}


def _backend(backend, what):
    value = str(backend).lower()
    if value not in BACKENDS:
        raise ConfigError(f"{what} backend {backend!r} is not supported; use cv2 (PaddleClas's default) or pil")
    return value


class Resampler:
    """resample(img, (w, h)): an HWC uint8 image resized as PaddleClas's UnifiedResize resizes it."""

    def __init__(self, interpolation=None, backend="cv2", what="resize"):
        self.backend = _backend(backend, what)
        table = _CV2 if self.backend == "cv2" else _PIL
        if isinstance(interpolation, str):
            if interpolation.lower() not in table:
                raise ConfigError(f"{what} interpolation {interpolation!r} is not known to the {self.backend} backend; "
                                  f"use one of {', '.join(table)}")
            self.method = table[interpolation.lower()]
        elif interpolation is None:
            self.method = cv2.INTER_LINEAR if self.backend == "cv2" else Image.BILINEAR
        else:
            self.method = int(interpolation)  # PaddleClas passes a number through: cv2's flag or PIL's filter

    def __call__(self, img, size):
        method = random.choice(self.method) if isinstance(self.method, tuple) else self.method
        size = (int(size[0]), int(size[1]))
        if self.backend == "cv2":
            out = cv2.resize(img, size, interpolation=method)
        else:
            out = np.asarray(Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img).resize(size, method))
        return out[:, :, None] if out.ndim == 2 else out


def decode(path, to_rgb=True, backend="cv2"):
    """The HWC uint8 image PaddleClas's DecodeImage gives for the file at `path`."""
    backend = _backend(backend, "DecodeImage")
    with open(path, "rb") as f:
        data = f.read()
    if backend == "cv2":
        img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise ConfigError(f"{path}: cv2 cannot decode this file as an image")
        return np.ascontiguousarray(img[:, :, ::-1]) if to_rgb else img
    import io
    try:
        with truncated_images_refused():
            img = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    except OSError as e:
        raise ConfigError(f"{path}: PIL cannot decode this file as an image ({e})") from None
    return img if to_rgb else np.ascontiguousarray(img[:, :, ::-1])
