"""Checks on each segmentation sample as it is read, for training and for evaluation.

PaddleSeg decodes the image with cv2 (None for a missing or truncated file, which fails later as
`'NoneType' object has no attribute 'astype'`), reads the label with PIL, and never compares the two:
a label of another size fails much later (or not at all), and label values outside [0, num_classes)
train silently or stop the loss kernel. `CheckedDataset` wraps a built paddleseg dataset so that each of
these is one ConfigError naming the sample's files and what to change:

    an image or label that is missing or does not decode
    a label with several channels (a colour mask instead of class indices)
    a label whose size differs from its image's
    label values outside [0, num_classes) other than ignore_index

The checks run on the decoded arrays the sample is made from (PaddleSeg's `Compose` is given them
instead of the paths, so nothing is read twice): a size comparison and a min/max of the label per sample.
"""
import os

import cv2
import numpy as np
import paddle
from PIL import Image

from slim.distill.errors import ConfigError, SlimError

MAX_VALUES = 8  # out-of-range label values quoted in an error
_CHECKED = "_slim_label_checked"  # set on a sample whose label CheckedCompose has checked


class SampleProblem(Exception):
    """What is wrong with one sample; `CheckedDataset` adds the files and the dataset to the message."""

    def __init__(self, template, **info):
        super().__init__(template)
        self.template, self.info = template, info


def _size(shape):
    return f"{shape[1]}x{shape[0]}"


def _read_label(path):
    with Image.open(path) as im:
        return np.asarray(im)


def out_of_range(label, num_classes, ignore_index):
    """The sorted label values outside [0, num_classes) that are not ignore_index (empty when all fit)."""
    if label.size == 0 or num_classes is None:
        return []
    lo, hi = label.min(), label.max()
    if lo >= 0 and hi < num_classes:
        return []
    bad = (label < 0) | (label >= num_classes)
    if ignore_index is not None:
        bad &= label != ignore_index
    return np.unique(label[bad]).tolist() if bad.any() else []


def check_label(label, image_shape, num_classes, ignore_index):
    """Raise a SampleProblem for a label of several channels, of another size than its image, or with
    values outside [0, num_classes) other than ignore_index."""
    if label.ndim == 3 and label.shape[2] == 1:
        label = label[:, :, 0]
    if label.ndim != 2:
        raise SampleProblem(
            "label {label} has shape {shape}, not one channel of class indices (image {image}); a label is a "
            "single-channel image (PNG mode L or P) whose pixel values are the classes 0..num_classes-1, not a "
            "colour mask. Convert it or fix the label path in the file list.", shape=tuple(label.shape))
    if image_shape is not None and tuple(label.shape[:2]) != tuple(image_shape[:2]):
        raise SampleProblem(
            "image {image} is {image_size} (width x height) but its label {label} is {label_size}; a label must "
            "have its image's size. Fix or regenerate the label, or remove the pair from the file list.",
            image_size=_size(image_shape), label_size=_size(label.shape))
    values = out_of_range(label, num_classes, ignore_index)
    if values:
        shown = ", ".join(str(v) for v in values[:MAX_VALUES]) + (" ..." if len(values) > MAX_VALUES else "")
        raise SampleProblem(
            "label {label} (image {image}) holds the value(s) {values} but num_classes is {num_classes}: label "
            "values must be in [0, {num_classes}) or the ignore_index {ignore_index}. Fix the label, or set "
            "num_classes (in `model` and in the dataset section) to the number of classes the labels use.",
            values=shown, num_classes=num_classes, ignore_index=ignore_index)


def _unreadable(path, role):
    if not os.path.isfile(path):
        return SampleProblem(role + " {%s} does not exist. Restore it or remove its line from the file list." % role)
    return SampleProblem(role + " {%s} could not be decoded (a truncated or corrupt file, or not an image). "
                                "Replace it or remove its line from the file list." % role)


class CheckedCompose:
    """PaddleSeg's `Compose`, given the decoded and checked image and label instead of their paths."""

    def __init__(self, compose, num_classes, ignore_index):
        self.compose, self.num_classes, self.ignore_index = compose, num_classes, ignore_index

    def __getattr__(self, name):
        if name == "compose" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.compose, name)

    def __call__(self, data):
        img = data.get("img")
        if isinstance(img, str):
            decoded = cv2.imread(img, getattr(self.compose, "read_flag", cv2.IMREAD_COLOR))
            if decoded is None:
                raise _unreadable(img, "image")
            data["img"] = img = decoded.astype("float32")  # as Compose reads it
        label = data.get("label")
        if isinstance(label, str):
            try:
                label = _read_label(label)
            except Exception:
                raise _unreadable(label, "label") from None
            data["label"] = label
        checked = isinstance(label, np.ndarray)
        if checked:
            check_label(label, img.shape if isinstance(img, np.ndarray) else None, self.num_classes,
                        self.ignore_index)
        out = self.compose(data)
        if checked and isinstance(out, dict):
            out[_CHECKED] = True
        return out


class CheckedDataset(paddle.io.Dataset):
    """A built paddleseg dataset whose samples are checked as they are read (see the module docstring).

    Attributes other than the ones below (num_classes, ignore_index, file_list, mode, ...) are the
    dataset's own.
    """

    def __init__(self, dataset, what, source=None):
        super().__init__()
        self.dataset, self.what, self.source = dataset, what, source
        self.checked_num_classes = getattr(dataset, "num_classes", None)
        self.checked_ignore_index = getattr(dataset, "ignore_index", 255)
        transforms = getattr(dataset, "transforms", None)
        if hasattr(transforms, "read_flag") and not isinstance(transforms, CheckedCompose):
            dataset.transforms = CheckedCompose(transforms, self.checked_num_classes, self.checked_ignore_index)

    def __getattr__(self, name):
        if name == "dataset" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __len__(self):
        return len(self.dataset)

    def sample_files(self, index):
        """[image, label] paths of sample `index` (the label left out when there is none)."""
        file_list = getattr(self.dataset, "file_list", None)
        if file_list is None:
            return []
        return [str(p) for p in file_list[index] if p]

    def _error(self, index, text):
        where = f" (sample {index} of {self.source})" if self.source else f" (sample {index})"
        return ConfigError(f"{self.what}{where}: {text}")

    def __getitem__(self, index):
        files = self.sample_files(index) + [None, None]
        names = {"image": files[0], "label": files[1]}
        try:
            data = self.dataset[index]
        except SampleProblem as p:
            raise self._error(index, p.template.format(**names, **p.info)) from None
        except SlimError:
            raise
        except Exception as e:
            raise self._error(index, f"could not read image {names['image']} with label {names['label']}: "
                                     f"{type(e).__name__}: {e}. Check these files and the dataset's "
                                     f"transforms.") from None
        if isinstance(data, dict) and not data.pop(_CHECKED, False) and isinstance(data.get("label"), np.ndarray):
            label = data["label"]  # a dataset type that reads its labels itself: check what it returns
            label = label[0] if label.ndim == 3 and label.shape[0] == 1 else label
            img = data.get("img")
            img_shape = img.shape[-2:] if isinstance(img, np.ndarray) and img.ndim == 3 else None
            try:
                check_label(label, img_shape, self.checked_num_classes, self.checked_ignore_index)
            except SampleProblem as p:
                raise self._error(index, p.template.format(**names, **p.info)) from None
        return data
