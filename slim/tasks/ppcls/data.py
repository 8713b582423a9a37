"""PaddleClas's `DataLoader` sections: ImageNetDataset and its transform ops, computed as PaddleClas computes them.

    DataLoader:
      Train:
        dataset:
          name: ImageNetDataset
          image_root: data/mnist/                 # paths in the list are relative to it
          cls_label_path: data/mnist/train_list.txt   # lines "train/3/00017.png 3"
          transform_ops:
            - DecodeImage: {to_rgb: True, channel_first: False}
            - RandCropImage: {size: 32, scale: [0.6, 1.0]}     # random-resized crop (scale, ratio)
            - RandFlipImage: {flip_code: 1}
            - NormalizeImage: {scale: 1.0/255.0, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225], order: ''}
        sampler: {name: DistributedBatchSampler, batch_size: 64, drop_last: False, shuffle: True}

Images are decoded and resized as PaddleClas does it (slim/tasks/ppcls/decode_resize.py: cv2 unless `backend: pil`;
RGB, grey images repeated to 3 channels, BGR with `to_rgb: False`); after the ops the HWC image is made CHW (as
PaddleClas's dataset does), unless ToCHWImage or NormalizeImage `order: chw` already did.
Randomness uses Python's `random` (seeded per sample by the trainer: reproducible and resumable).
`batch_transform_ops` (Mixup, Cutmix, FMix, OpSampler) mix the training batches: slim/tasks/ppcls/batch_ops.py.
"""
import math
import random

import numpy as np
from PIL import Image

from slim.distill.errors import ConfigError
from slim.tasks.cls.data import CenterCrop, ClsFileList, _size2
from .augment import RandomErasing, TimmAutoAugment
from .autoaugment import AutoAugment
from .config import number
from .decode_resize import Resampler, decode

_INTERP = {None: Image.BILINEAR, 0: Image.NEAREST, 1: Image.BILINEAR, 2: Image.BICUBIC, 3: Image.BOX,
           4: Image.LANCZOS, "nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "linear": Image.BILINEAR,
           "bicubic": Image.BICUBIC, "cubic": Image.BICUBIC, "area": Image.BOX, "box": Image.BOX,
           "lanczos": Image.LANCZOS, "hamming": Image.HAMMING, "random": Image.BILINEAR}


def pil_method(interpolation):
    """PaddleClas's `interpolation` (a name, or cv2's number) -> a PIL resampling method."""
    method = _INTERP.get(interpolation.lower() if isinstance(interpolation, str) else interpolation)
    if method is None:
        raise ConfigError(f"interpolation {interpolation!r} is not known; use one of bilinear, nearest, bicubic, area, "
                          f"lanczos")
    return method


class DecodeImage:
    """How the dataset decodes the file (decode_resize.decode); as an op it passes the decoded image on."""

    def __init__(self, to_rgb=True, channel_first=False, to_np=True, backend="cv2"):
        if channel_first:
            raise ConfigError("DecodeImage channel_first: True is not supported here; the dataset makes the image "
                              "CHW at the end (set channel_first: False).")
        self.to_rgb = bool(to_rgb)
        self.backend = str(backend).lower()
        Resampler(backend=backend, what="DecodeImage")  # the backend is checked when the config is read

    def __call__(self, img):
        return img


class ResizeImage:
    """To `size` ([w, h] or an int), or the short side to `resize_short` (it wins when both are given), with
    PaddleClas's rounding and its resize (cv2 unless backend: pil)."""

    def __init__(self, size=None, resize_short=None, interpolation=None, backend="cv2", return_numpy=True):
        if resize_short is not None and resize_short > 0:
            self.resize_short, self.size = resize_short, None
        elif size is not None:
            self.resize_short, self.size = None, _size2(size, "ResizeImage")
        else:
            raise ConfigError("ResizeImage needs `size` (int or [w, h]) or `resize_short` (int)")
        self.resample = Resampler(interpolation, backend, "ResizeImage")

    def __call__(self, img):
        h, w = img.shape[:2]
        if self.resize_short is None:
            return self.resample(img, self.size)
        percent = float(self.resize_short) / min(w, h)
        return self.resample(img, (int(round(w * percent)), int(round(h * percent))))


class CropImage(CenterCrop):
    """Centre crop of `size` (the classification task's CenterCrop, under PaddleClas's names)."""
    name, resize = "CropImage", "ResizeImage"


class RandCropImage:
    """Random-resized crop: area share in `scale` (default [0.08, 1]), aspect ratio in `ratio` (default
    [3/4, 4/3]), resized to `size`, drawn as PaddleClas draws it."""

    def __init__(self, size, scale=None, ratio=None, interpolation=None, use_log_aspect=False, backend="cv2"):
        self.size = _size2(size, "RandCropImage")
        self.scale = [0.08, 1.0] if scale is None else [float(s) for s in scale]
        self.ratio = [3.0 / 4.0, 4.0 / 3.0] if ratio is None else [float(r) for r in ratio]
        self.resample, self.use_log_aspect = Resampler(interpolation, backend, "RandCropImage"), bool(use_log_aspect)

    def __call__(self, img):
        if self.use_log_aspect:
            aspect = math.exp(random.uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
        else:
            aspect = random.uniform(*self.ratio)
        img_h, img_w = img.shape[:2]
        bound = min((float(img_w) / img_h) / aspect, (float(img_h) / img_w) * aspect)
        scale_max, scale_min = min(self.scale[1], bound), min(self.scale[0], bound)
        area = img_w * img_h * random.uniform(scale_min, scale_max)
        # PaddleClas's arithmetic, for the same crop from the same draws
        w = max(1, min(img_w, int(math.sqrt(area * aspect))))
        h = max(1, min(img_h, int(math.sqrt(area / aspect))))
        x, y = random.randint(0, img_w - w), random.randint(0, img_h - h)
        return self.resample(img[y:y + h, x:x + w], self.size)


class RandFlipImage:
    def __init__(self, flip_code=1):
        if flip_code not in (1, 0, -1):
            raise ConfigError(f"RandFlipImage flip_code must be 1 (horizontal), 0 (vertical) or -1, got {flip_code}")
        self.flip_code = flip_code

    def __call__(self, img):
        if random.randint(0, 1) == 1:
            if self.flip_code in (1, -1):
                img = img[:, ::-1]
            if self.flip_code in (0, -1):
                img = img[::-1]
        return img


class NormalizeImage:
    """(img * scale - mean) / std; `order: chw` means the output is CHW."""

    def __init__(self, scale=None, mean=None, std=None, order="chw", output_fp16=False, channel_num=3):
        self.scale = number(scale, "NormalizeImage scale") if scale is not None else 1.0 / 255.0
        self.mean = np.asarray(mean if mean is not None else [0.485, 0.456, 0.406], dtype=np.float32)
        self.std = np.asarray(std if std is not None else [0.229, 0.224, 0.225], dtype=np.float32)
        if (self.std == 0).any():
            raise ConfigError("NormalizeImage std must not contain 0")
        if output_fp16 or int(channel_num) != 3:
            raise ConfigError("NormalizeImage output_fp16 / channel_num other than 3 are not supported here")
        self.chw = order == "chw"

    def __call__(self, img):
        img = (img.astype(np.float32) * self.scale - self.mean.reshape(1, 1, -1)) / self.std.reshape(1, 1, -1)
        return img.transpose(2, 0, 1) if self.chw else img


class ToCHWImage:
    def __call__(self, img):
        return img.transpose(2, 0, 1)


OPS = {c.__name__: c for c in (DecodeImage, ResizeImage, CropImage, RandCropImage, RandFlipImage, NormalizeImage,
                               ToCHWImage, TimmAutoAugment, RandomErasing, AutoAugment)}
_CHW = (ToCHWImage,)


class Compose:
    """transform_ops -> a callable HWC uint8 -> CHW float32."""

    def __init__(self, ops, where):
        self.ops = []
        for item in ops or []:
            if isinstance(item, str):
                item = {item: None}
            if not isinstance(item, dict) or len(item) != 1:
                raise ConfigError(f"{where}: each transform op is `- OpName: {{...}}`, got {item!r}")
            (name, args), = item.items()
            if name not in OPS:
                raise ConfigError(f"{where}: transform op {name!r} is not supported; supported: {', '.join(OPS)}. "
                                  f"Remove it from transform_ops.")
            try:
                self.ops.append(OPS[name](**dict(args or {})))
            except TypeError as e:
                raise ConfigError(f"{where}: {name}: {e}") from None

    def __call__(self, img):
        chw = False
        for op in self.ops:
            img = op.erase(img, chw) if isinstance(op, RandomErasing) else op(img)
            if isinstance(op, ToCHWImage) or (isinstance(op, NormalizeImage) and op.chw):
                chw = True
        if not chw:
            img = img.transpose(2, 0, 1)
        if img.dtype == np.uint8:
            img = img.astype(np.float32)
        return np.ascontiguousarray(img, dtype=np.float32)


class ImageNetDataset(ClsFileList):
    """`image_root` + `cls_label_path` lines "relative/path label" (`delimiter` default: whitespace)."""

    def __init__(self, image_root=None, cls_label_path=None, transform_ops=None, delimiter=None, relabel=False,
                 where="DataLoader"):
        if not image_root or not cls_label_path:
            raise ConfigError(f"{where}.dataset: ImageNetDataset needs image_root and cls_label_path")
        if relabel:
            raise ConfigError(f"{where}.dataset: relabel is not supported; give labels 0..C-1 in the list")
        super().__init__(dataset_root=image_root, file_list=cls_label_path, transforms=None, color="rgb",
                         delimiter=delimiter)
        self.transforms = Compose(transform_ops, f"{where}.dataset.transform_ops")
        decoders = [op for op in self.transforms.ops if isinstance(op, DecodeImage)]
        self.decoder = decoders[0] if decoders else DecodeImage()

    def image(self, index):
        return decode(self.samples[index][0], self.decoder.to_rgb, self.decoder.backend)


DATASETS = {"ImageNetDataset": ImageNetDataset}


def train_batch_ops(cfg):
    """DataLoader.Train.dataset.batch_transform_ops of a config (None without)."""
    return ((((cfg.get("DataLoader") or {}).get("Train") or {}).get("dataset") or {}).get("batch_transform_ops")
            or None)


def build_dataset(loader_cfg, where):
    """`DataLoader.Train` / `DataLoader.Eval` -> a dataset."""
    ds = dict((loader_cfg or {}).get("dataset") or {})
    if not ds:
        raise ConfigError(f"The config has no {where}.dataset section.")
    name = ds.pop("name", None)
    batch_ops = ds.pop("batch_transform_ops", None)
    if batch_ops and not where.endswith("Train"):
        raise ConfigError(f"{where}.dataset.batch_transform_ops: operators that mix the samples of a batch (Mixup, "
                          f"Cutmix) are for training; remove them from {where} (-o {where}.dataset.batch_transform_ops"
                          f"=null).")
    if name not in DATASETS:
        raise ConfigError(f"{where}.dataset name {name!r} is not supported; supported: {', '.join(DATASETS)} "
                          f"(image_root + cls_label_path of 'relative/path label' lines).")
    try:
        dataset = DATASETS[name](where=where, **ds)
    except TypeError as e:
        raise ConfigError(f"{where}.dataset ({name}): {e}") from None
    dataset.batch_transform_ops = batch_ops or None  # built by the task, which knows Arch.class_num (batch_ops.py)
    return dataset
