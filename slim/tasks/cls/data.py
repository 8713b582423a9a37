"""Classification datasets (PaddleClas file lists, ImageNet-style class folders) and transforms.

    train_dataset:
      type: ClsFileList                 # PaddleClas's ImageNetDataset: lines "train/3/00017.png 3"
      dataset_root: data/mnist          # (image_root) paths in the list are relative to it
      file_list: data/mnist/train_list.txt   # (cls_label_path)
      transforms:                       # (transform_ops)
        - {type: RandomCrop, size: 28, padding: 2}
        - {type: Normalize, mean: [0.1307, 0.1307, 0.1307], std: [0.3081, 0.3081, 0.3081]}
    val_dataset:
      type: ImageFolder                 # dataset_root/<class>/*.png; classes sorted (numerically when
      dataset_root: data/mnist/val      #   every folder name is a number), or listed in `classes`
      transforms: [{type: Normalize, ...}]

Both take `color: rgb` (default; grey images are repeated to 3 channels) or `gray` (1 channel), and
`cache: true` (decode every image once, when the dataset is built: a bad image stops the run before
training starts). Samples are dicts `{img: float32 (C, H, W), label: int}`. An image that does not
decode is a ConfigError naming the file (during training, at the first batch that holds it).

Transforms (PaddleClas names accepted): `Resize` (ResizeImage: `size` int or [w, h], or `resize_short`),
`RandomCrop` (RandCropImage with `size`; `padding` pads with zeros first), `CenterCrop` (CropImage),
`RandomHorizontalFlip` (RandFlipImage, `prob`), `Normalize` (NormalizeImage: `mean`, `std` in [0, 1]
units, `scale` default 1/255), `ToCHW` (ToCHWImage; a no-op: samples are always CHW). Randomness comes
from numpy's global generator, which the trainer seeds per sample (reproducible, resumable).
"""
import contextlib
import os
import threading

import numpy as np
import paddle
from PIL import Image, ImageFile

from slim.distill.errors import ConfigError, build_registered

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")


# ----- images -----------------------------------------------------------------------------------------
_STRICT_DECODE = threading.Lock()


@contextlib.contextmanager
def truncated_images_refused():
    """PIL fills a truncated file's missing pixels silently while ImageFile.LOAD_TRUNCATED_IMAGES is set, and
    importing ppdet.engine sets it for the whole process: a damaged image is refused here all the same."""
    if not ImageFile.LOAD_TRUNCATED_IMAGES:
        yield
        return
    with _STRICT_DECODE:
        saved, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = saved


def read_image(path, color="rgb"):
    """HWC uint8 (3 channels for rgb, 1 for gray); a ConfigError naming the file when it does not decode."""
    try:
        with truncated_images_refused(), Image.open(path) as im:
            im = im.convert("L" if color == "gray" else "RGB")
            arr = np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise ConfigError(f"Image file not found: {path}") from None
    except (OSError, SyntaxError, ValueError) as e:  # PIL: UnidentifiedImageError, truncated files, ...
        raise ConfigError(f"Cannot decode image {path}: {e}. Replace the file or remove it from the dataset "
                          f"(its file list or class folder).") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


# ----- transforms -------------------------------------------------------------------------------------
def _size2(size, what):
    if isinstance(size, int):
        return size, size
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return int(size[0]), int(size[1])
    raise ConfigError(f"{what}: size must be an int or [width, height], got {size!r}")


def resize_to(img, size, method):
    """An HWC uint8 image resized to `size` (w, h) with a PIL resampling method; unchanged when already that size."""
    size = (int(size[0]), int(size[1]))
    if size == (img.shape[1], img.shape[0]):
        return img
    out = np.asarray(Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img).resize(size, method))
    return out[:, :, None] if out.ndim == 2 else out


class Resize:
    name = "Resize"  # as the config spells it, for messages

    def __init__(self, size=None, resize_short=None, interpolation="bilinear"):
        if (size is None) == (resize_short is None):
            raise ConfigError(f"{self.name} needs exactly one of `size` (int or [w, h]) and `resize_short` (int)")
        self.size = _size2(size, self.name) if size is not None else None
        self.resize_short = resize_short
        self.method = self.resample(interpolation)

    @staticmethod
    def resample(interpolation):
        methods = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
                   "lanczos": Image.LANCZOS}
        if interpolation not in methods:
            raise ConfigError(f"Resize interpolation must be one of {sorted(methods)}, got {interpolation!r}")
        return methods[interpolation]

    def __call__(self, img):
        h, w = img.shape[:2]
        if self.size is not None:
            size = self.size
        else:
            scale = float(self.resize_short) / min(h, w)
            size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
        return resize_to(img, size, self.method)


class RandomCrop:
    def __init__(self, size, padding=0):
        self.w, self.h = _size2(size, "RandomCrop")
        self.padding = int(padding)

    def __call__(self, img):
        if self.padding:
            p = self.padding
            img = np.pad(img, ((p, p), (p, p), (0, 0)))
        h, w = img.shape[:2]
        if h < self.h or w < self.w:
            raise ConfigError(f"RandomCrop of {self.w}x{self.h} on a {w}x{h} image; add a Resize before it")
        y = np.random.randint(0, h - self.h + 1)
        x = np.random.randint(0, w - self.w + 1)
        return img[y:y + self.h, x:x + self.w]


class CenterCrop:
    name, resize = "CenterCrop", "Resize"  # as the config spells them, for messages

    def __init__(self, size):
        self.w, self.h = _size2(size, self.name)

    def __call__(self, img):
        h, w = img.shape[:2]
        if h < self.h or w < self.w:
            raise ConfigError(f"{self.name} of {self.w}x{self.h} on a {w}x{h} image; add a {self.resize} before it")
        y, x = (h - self.h) // 2, (w - self.w) // 2
        return img[y:y + self.h, x:x + self.w]


class RandomHorizontalFlip:
    def __init__(self, prob=0.5, flip_code=1):
        if flip_code != 1:
            raise ConfigError("only horizontal flips (flip_code: 1) are supported")
        self.prob = float(prob)

    def __call__(self, img):
        return img[:, ::-1] if np.random.rand() < self.prob else img


class Normalize:
    IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD, scale=1.0 / 255.0, order=None):
        self.mean = np.asarray(mean, dtype=np.float32).reshape(1, 1, -1)
        self.std = np.asarray(std, dtype=np.float32).reshape(1, 1, -1)
        if isinstance(scale, str):  # PaddleClas writes scale: 1.0/255.0
            try:
                num, den = scale.split("/")
                scale = float(num) / float(den)
            except ValueError:
                raise ConfigError(f"Normalize scale {scale!r} is not a number or a fraction like 1.0/255.0") from None
        self.scale = float(scale)
        if (self.std == 0).any():
            raise ConfigError("Normalize std must not contain 0")

    def __call__(self, img):
        img = img.astype(np.float32) * self.scale
        if self.mean.shape[-1] not in (1, img.shape[2]):
            raise ConfigError(f"Normalize has {self.mean.shape[-1]} mean values for {img.shape[2]}-channel images "
                              f"(color: gray gives 1 channel, rgb 3)")
        return (img - self.mean) / self.std


class ToCHW:
    def __call__(self, img):
        return img


TRANSFORMS = {
    "Resize": Resize, "ResizeImage": Resize,
    "RandomCrop": RandomCrop, "RandCropImage": RandomCrop,
    "CenterCrop": CenterCrop, "CropImage": CenterCrop,
    "RandomHorizontalFlip": RandomHorizontalFlip, "RandFlipImage": RandomHorizontalFlip,
    "Normalize": Normalize, "NormalizeImage": Normalize,
    "ToCHW": ToCHW, "ToCHWImage": ToCHW,
}
_SKIPPED = {"DecodeImage"}  # PaddleClas decodes in a transform; here the dataset decodes


def build_transform(cfg):
    if isinstance(cfg, str):
        cfg = {"type": cfg}
    if isinstance(cfg, dict) and "type" not in cfg and len(cfg) == 1:  # PaddleClas: - ResizeImage: {size: 32}
        (name, args), = cfg.items()
        cfg = dict(args or {}, type=name)
    if not isinstance(cfg, dict) or "type" not in cfg:
        raise ConfigError(f"A transform is {{type: NAME, ...}}, got {cfg!r}")
    args = dict(cfg)
    name = args.pop("type")
    if name in _SKIPPED:
        return None
    return build_registered(TRANSFORMS, name, args, "classification transform")


class Compose:
    def __init__(self, cfgs):
        self.transforms = [t for t in (build_transform(c) for c in (cfgs or [])) if t is not None]
        self.normalizes = any(isinstance(t, Normalize) for t in self.transforms)

    def __call__(self, img):
        for t in self.transforms:
            img = t(img)
        if not self.normalizes:  # no Normalize given: scale to [0, 1]
            img = img.astype(np.float32) / 255.0
        return np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32)


# ----- datasets ---------------------------------------------------------------------------------------
class ClsDataset(paddle.io.Dataset):
    """(image path, label) samples with transforms; subclasses fill `self.samples`."""

    def __init__(self, samples, transforms=None, color="rgb", cache=False, num_classes=None, source=""):
        super().__init__()
        if color not in ("rgb", "gray"):
            raise ConfigError(f"color must be 'rgb' or 'gray', got {color!r}")
        self.samples, self.color, self.source = list(samples), color, source
        self.transforms = Compose(transforms)
        self.labels = np.asarray([label for _, label in self.samples], dtype=np.int64)
        self.num_classes = num_classes
        self._cache = [read_image(p, color) for p, _ in self.samples] if cache else None
        #: return {"error": message} instead of raising (set for training: paddle's DataLoader thread would
        #: swallow the exception and wait forever; the task raises it from the main thread instead)
        self.defer_errors = False

    def __len__(self):
        return len(self.samples)

    def image(self, index):
        if self._cache is not None:
            return self._cache[index]
        return read_image(self.samples[index][0], self.color)

    def __getitem__(self, index):
        try:
            img = self.transforms(self.image(index))
        except ConfigError as e:
            if self.defer_errors:
                return {"error": str(e)}
            raise
        return {"img": img, "label": int(self.samples[index][1])}


def _check_files_exist(paths, where):
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        more = f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
        raise ConfigError(f"{where} names {len(missing)} image(s) that do not exist, e.g. "
                          f"{', '.join(missing[:3])}{more}. Check dataset_root (paths in the list are relative to it).")


class ClsFileList(ClsDataset):
    """PaddleClas file list: one `relative/path.png label` per line (paths relative to dataset_root)."""

    def __init__(self, dataset_root=".", file_list=None, transforms=None, color="rgb", cache=False, delimiter=None,
                 num_classes=None, mode=None):
        if not file_list:
            raise ConfigError("ClsFileList needs `file_list` (PaddleClas: cls_label_path), e.g. "
                              "data/mnist/train_list.txt")
        if not os.path.isfile(file_list):
            raise ConfigError(f"File list not found: {file_list}. Prepare the data first (e.g. `python "
                              f"tools/prepare_data.py mnist --out data/mnist`) or fix file_list.")
        samples = []
        with open(file_list, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                parts = line.rsplit(delimiter, 1) if delimiter else line.rsplit(None, 1)
                try:
                    path, label = parts[0].strip(), int(parts[1])
                except (IndexError, ValueError):
                    raise ConfigError(f"{file_list}, line {n}: expected 'path label' (an integer label), got "
                                      f"{line!r}") from None
                samples.append((os.path.join(dataset_root, path), label))
        if not samples:
            raise ConfigError(f"File list {file_list} holds no samples.")
        _check_files_exist([p for p, _ in samples], f"File list {file_list}")
        super().__init__(samples, transforms, color, cache, num_classes, source=file_list)


def class_folders(root, classes=None):
    """The class folder names of an ImageFolder root, in label order."""
    if not os.path.isdir(root):
        raise ConfigError(f"ImageFolder dataset_root not found: {root} (expected {root}/<class>/<image>). "
                          f"Prepare the data first (e.g. `python tools/prepare_data.py mnist --out data/mnist`).")
    found = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    if classes is not None:
        missing = [str(c) for c in classes if str(c) not in found]
        if missing:
            raise ConfigError(f"ImageFolder {root}: class folder(s) {missing} listed in `classes` do not exist")
        return [str(c) for c in classes]
    if not found:
        raise ConfigError(f"ImageFolder {root} holds no class folders (expected {root}/<class>/<image>).")
    if all(d.isdigit() for d in found):
        found.sort(key=int)
    return found


class ImageFolder(ClsDataset):
    """dataset_root/<class>/<image>: label i is the i-th class folder (see `class_folders`)."""

    def __init__(self, dataset_root=None, transforms=None, color="rgb", cache=False, classes=None, num_classes=None,
                 mode=None):
        if not dataset_root:
            raise ConfigError("ImageFolder needs `dataset_root`: a folder of class folders, e.g. data/mnist/train")
        names = class_folders(dataset_root, classes)
        samples = []
        for label, name in enumerate(names):
            folder = os.path.join(dataset_root, name)
            files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
            if not files:
                raise ConfigError(f"Class folder {folder} (class {label}, {name!r}) holds no images "
                                  f"({', '.join(IMAGE_EXTENSIONS)}). Add images or remove the folder.")
            samples += [(os.path.join(folder, f), label) for f in files]
        self.class_names = names
        super().__init__(samples, transforms, color, cache, num_classes, source=dataset_root)


_ALIASES = {"image_root": "dataset_root", "cls_label_path": "file_list", "transform_ops": "transforms"}
DATASETS = {"ClsFileList": ClsFileList, "ImageNetDataset": ClsFileList, "FileList": ClsFileList,
            "ImageFolder": ImageFolder}


def build_dataset(ds_cfg, where="dataset"):
    cfg = dict(ds_cfg or {})
    for old, new in _ALIASES.items():
        if old in cfg:
            cfg[new] = cfg.pop(old)
    kind = cfg.pop("type", None) or cfg.pop("name", None)
    return build_registered(DATASETS, kind, cfg, "dataset type", where)


def cls_collate(samples):
    errors = [s["error"] for s in samples if "error" in s]
    if errors:
        # raised by the task on the main thread (see ClsDataset.defer_errors); paddle's loader needs a tensor
        return {"error": errors[0], "placeholder": np.zeros(1, dtype=np.float32)}
    return {"img": paddle.to_tensor(np.stack([s["img"] for s in samples])),
            "label": paddle.to_tensor(np.asarray([s["label"] for s in samples], dtype=np.int64))}
