"""Detection data: Pascal VOC lists and COCO json, checked, with ppdet's data operators.

    TrainDataset: !VOCDataSet {dataset_dir: data/trees, image_dir: '', anno_path: train.txt,
                               label_list: label_list.txt}
    TrainReader: {sample_transforms: [{Decode: {}}, {RandomFlip: {}}],
                  batch_transforms: [{BatchRandomResize: ...}, ..., {Gt2YoloTarget: ...}], batch_size: 8}

VOC annotations are read here (not by ppdet's VOCDataSet) so that a bad file is a clear error naming it:
an xml that does not parse, a class missing from label_list.txt. A box that leaves the image is clipped
to it, a box of zero area (after clipping) is dropped; both are counted and reported. Images without
boxes are kept (they teach the detector what background looks like). COCO json goes through ppdet's
COCODataSet (pycocotools).

Every sample's random augmentation is drawn after the engine seeds numpy and `random` for that sample
(slim/engine/data.py), so batches are the same whatever the number of workers and after a resume.
"""
import copy
import os
import traceback
import xml.etree.ElementTree as ET

import numpy as np
import paddle

from slim.distill.errors import ConfigError
from .compat import import_ppdet

DATASET_KEYS = {"train": "TrainDataset", "val": "EvalDataset", "test": "TestDataset"}
READER_KEYS = {"train": "TrainReader", "val": "EvalReader", "test": "TestReader"}
DEFAULT_FIELDS = ["image", "gt_bbox", "gt_class", "difficult"]
_CACHE = {}


def _log(message):
    from slim.engine import env
    if env.is_main_process():
        print(message, flush=True)


# ----- dataset sections ------------------------------------------------------------------------
def dataset_section(cfg, mode):
    key = DATASET_KEYS[mode]
    ds = cfg.get(key)
    if not ds and mode == "test":
        ds = cfg.get("EvalDataset") or cfg.get("TrainDataset")
    if not ds:
        raise ConfigError(f"The config has no `{key}:` section (needed for {mode}); add e.g. "
                          f"`{key}: !VOCDataSet {{dataset_dir: data/trees, image_dir: '', anno_path: "
                          f"{'train' if mode == 'train' else 'val'}.txt, label_list: label_list.txt}}`.")
    ds = dict(ds)
    kind = ds.pop("type", None) or ds.pop("name", None)
    if kind is None:
        raise ConfigError(f"`{key}` does not say its format: tag it (`{key}: !VOCDataSet {{...}}`) or add "
                          f"`name: VOCDataSet` (or COCODataSet).")
    return kind, ds


def _join(*parts):
    parts = [p for p in parts if p not in (None, "")]
    return os.path.join(*parts) if parts else ""


def read_label_list(path):
    if not os.path.isfile(path):
        raise ConfigError(f"label_list {path} not found; it holds one class name per line (line number = "
                          f"class id). Prepare the data first (e.g. `python tools/prepare_data.py trees --out "
                          f"data/trees`) or fix dataset_dir / label_list.")
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    if not names:
        raise ConfigError(f"label_list {path} is empty: write one class name per line.")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"label_list {path} names {dup} twice; each class once, one per line.")
    return names


def class_names(cfg, mode="train"):
    """The class names of the config's dataset (label_list.txt or the COCO categories), or None."""
    try:
        kind, ds = dataset_section(cfg, mode)
    except ConfigError:
        return None
    if kind == "VOCDataSet" and ds.get("label_list"):
        return read_label_list(_join(ds.get("dataset_dir"), ds["label_list"]))
    if kind == "COCODataSet":
        return load_records(cfg, mode)["names"]
    return None


class BoxStats:
    """Counts of what the annotation check changed, with a few examples."""

    def __init__(self):
        self.images = self.empty = self.boxes = self.clipped = self.dropped = 0
        self.examples = []

    def note(self, what, xml_path, index, box):
        if len(self.examples) < 3:
            self.examples.append(f"{what} box #{index} {[round(v, 1) for v in box]} in {xml_path}")

    def describe(self, name):
        text = (f"{name}: {self.images} images ({self.empty} without boxes), {self.boxes} boxes")
        if self.clipped or self.dropped:
            text += (f"; {self.clipped} box(es) reaching outside the image were clipped to it, {self.dropped} "
                     f"of zero area (after clipping) were dropped (e.g. {'; '.join(self.examples)})")
        return text


def _xml_text(node, path):
    found = node.find(path)
    return None if found is None or found.text is None else found.text.strip()


def _image_size(path):
    from PIL import Image
    try:
        with Image.open(path) as im:
            return im.size
    except Exception as e:
        raise ConfigError(f"Cannot read image {path} ({e}); fix or remove it from the list.") from None


def parse_voc_xml(xml_path, img_path, cname2cid, label_path, stats):
    """One ppdet record from a VOC xml: boxes clipped to the image, zero-area ones dropped."""
    try:
        root = ET.parse(xml_path).getroot()
    except (ET.ParseError, OSError) as e:
        raise ConfigError(f"Annotation {xml_path} is not valid xml ({e}); fix this file or remove its line "
                          f"from the list.") from None
    w = h = None
    size = root.find("size")
    if size is not None:
        try:
            w, h = float(_xml_text(size, "width") or 0), float(_xml_text(size, "height") or 0)
        except ValueError:
            w = h = None
    if not w or not h or w <= 0 or h <= 0:
        w, h = (float(v) for v in _image_size(img_path))
    boxes, classes, difficult = [], [], []
    for i, obj in enumerate(root.findall("object")):
        name = _xml_text(obj, "name")
        if name not in cname2cid:
            raise ConfigError(f"Annotation {xml_path}: object #{i} is of class {name!r}, which is not in "
                              f"{label_path} ({', '.join(cname2cid)}). Add the class to label_list.txt (one "
                              f"per line) or fix the name in the file.")
        try:
            box = [float(_xml_text(obj, f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
        except (TypeError, ValueError):
            raise ConfigError(f"Annotation {xml_path}: object #{i} has a missing or non-numeric bndbox "
                              f"coordinate; fix this file.") from None
        clipped = [min(max(box[0], 0.0), w), min(max(box[1], 0.0), h),
                   min(max(box[2], 0.0), w), min(max(box[3], 0.0), h)]
        if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
            stats.dropped += 1
            stats.note("dropped", xml_path, i, box)
            continue
        if clipped != box:
            stats.clipped += 1
            stats.note("clipped", xml_path, i, box)
        boxes.append(clipped)
        classes.append(cname2cid[name])
        diff = _xml_text(obj, "difficult")
        difficult.append(int(diff) if diff and diff.isdigit() else 0)
    stats.images += 1
    stats.boxes += len(boxes)
    stats.empty += not boxes
    return {
        "im_file": img_path, "h": h, "w": w,
        "gt_bbox": np.array(boxes, dtype=np.float32).reshape(-1, 4),
        "gt_class": np.array(classes, dtype=np.int32).reshape(-1, 1),
        "difficult": np.array(difficult, dtype=np.int32).reshape(-1, 1),
    }


def load_voc(ds, name):
    root = ds.get("dataset_dir") or ""
    image_dir = ds.get("image_dir") or ""
    anno = _join(root, ds.get("anno_path"))
    if not ds.get("anno_path") or not os.path.isfile(anno):
        raise ConfigError(f"{name}: file list {anno!r} not found. Prepare the data (e.g. `python "
                          f"tools/prepare_data.py trees --out data/trees`) or fix dataset_dir / anno_path.")
    if not ds.get("label_list"):
        raise ConfigError(f"{name}: set `label_list: label_list.txt` (one class name per line); the 20 "
                          f"Pascal VOC classes are not assumed.")
    label_path = _join(root, ds["label_list"])
    names = read_label_list(label_path)
    cname2cid = {n: i for i, n in enumerate(names)}
    stats = BoxStats()
    limit = ds.get("sample_num") or -1
    records = []
    with open(anno, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 2:
                raise ConfigError(f"{anno}:{lineno}: expected `image_path annotation_path`, got {line.strip()!r}")
            img, xml = (_join(root, image_dir, p) for p in parts[:2])
            if not os.path.isfile(img):
                raise ConfigError(f"{anno}:{lineno}: image {img} not found (paths are relative to "
                                  f"dataset_dir/image_dir = {_join(root, image_dir) or '.'!r}).")
            if not os.path.isfile(xml):
                raise ConfigError(f"{anno}:{lineno}: annotation {xml} not found.")
            rec = parse_voc_xml(xml, img, cname2cid, label_path, stats)
            rec["im_id"] = np.array([len(records)])
            records.append(rec)
            if 0 < limit <= len(records):
                break
    if not records:
        raise ConfigError(f"{name}: {anno} lists no image.")
    if not ds.get("allow_empty", True):
        records = [r for r in records if len(r["gt_bbox"])]
    return {"records": records, "names": names, "stats": stats, "format": "voc", "label_list": label_path}


def load_coco(ds, name):
    import_ppdet()
    from ppdet.data.source.coco import COCODataSet
    anno = _join(ds.get("dataset_dir"), ds.get("anno_path"))
    if not os.path.isfile(anno):
        raise ConfigError(f"{name}: COCO annotation file {anno!r} not found; fix dataset_dir / anno_path.")
    fields = ds.get("data_fields") or ["image", "gt_bbox", "gt_class", "is_crowd"]
    dataset = COCODataSet(dataset_dir=ds.get("dataset_dir"), image_dir=ds.get("image_dir"),
                          anno_path=ds.get("anno_path"), data_fields=fields,
                          allow_empty=ds.get("allow_empty", True), empty_ratio=ds.get("empty_ratio", 1.0))
    try:
        dataset.parse_dataset()
    except Exception as e:
        raise ConfigError(f"{name}: could not read COCO annotations {anno}: {e}") from None
    from pycocotools.coco import COCO
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(anno)
    cat_ids = sorted(coco.getCatIds())
    names = [coco.loadCats(c)[0]["name"] for c in cat_ids]
    stats = BoxStats()
    kept = 0
    for rec in dataset.roidbs:
        stats.images += 1
        n = len(rec.get("gt_bbox", []))
        kept += n
        stats.empty += n == 0
    total = sum(1 for a in coco.dataset.get("annotations", []) if not a.get("iscrowd", 0))
    stats.boxes, stats.dropped = kept, max(total - kept, 0)
    return {"records": dataset.roidbs, "names": names, "stats": stats, "format": "coco", "anno_path": anno,
            "clsid2catid": {i: c for i, c in enumerate(cat_ids)}}


def load_records(cfg, mode):
    """Parsed and checked annotations of a mode ('train', 'val'); cached per dataset section."""
    kind, ds = dataset_section(cfg, mode)
    key = (kind, repr(sorted(ds.items())))
    if key in _CACHE:
        return _CACHE[key]
    name = DATASET_KEYS[mode]
    if kind == "VOCDataSet":
        data = load_voc(ds, name)
    elif kind == "COCODataSet":
        data = load_coco(ds, name)
    else:
        raise ConfigError(f"{name}: dataset type {kind!r} is not supported; use VOCDataSet or COCODataSet.")
    data["fields"] = list(ds.get("data_fields") or DEFAULT_FIELDS)
    _log(f"[DATA] {data['stats'].describe(name)}")
    _CACHE[key] = data
    return data


def check_num_classes(cfg, names, where):
    n = cfg.get("num_classes")
    if n is not None and int(n) != len(names):
        raise ConfigError(f"num_classes is {n} but {where} lists {len(names)} classes ({', '.join(names[:10])}); "
                          f"set `num_classes: {len(names)}` (-o num_classes={len(names)}).")


# ----- samples and batches ---------------------------------------------------------------------
def _reader(cfg, mode):
    reader = dict(cfg.get(READER_KEYS[mode]) or {})
    if mode == "test" and not reader.get("sample_transforms"):
        reader = dict(cfg.get("EvalReader") or {})
    if not reader.get("sample_transforms"):
        raise ConfigError(f"`{READER_KEYS[mode]}.sample_transforms` is missing; it lists ppdet data operators, "
                          f"e.g. [{{Decode: {{}}}}, {{Resize: {{target_size: [320, 320], keep_ratio: false}}}}, "
                          f"{{NormalizeImage: {{}}}}, {{Permute: {{}}}}].")
    return reader


def _compose(transforms, num_classes, where=""):
    import_ppdet()
    from ppdet.data import reader as ppdet_reader
    from ppdet.data import transform
    ops = []
    for i, t in enumerate(transforms or []):
        if not isinstance(t, dict) or len(t) != 1:
            raise ConfigError(f"{where}[{i}] must be a one-key mapping like `- Decode: {{}}`, got {t!r}")
        name, args = next(iter(t.items()))
        if not hasattr(transform, name):
            raise ConfigError(f"{where}[{i}]: {name!r} is not a ppdet data operator.")
        ops.append({name: dict(args) if isinstance(args, dict) else (args or {})})
    try:  # batch operators take the list of samples; stacking is done by the collate classes below
        return ppdet_reader.Compose(ops, num_classes)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def _strip(rec, fields):
    return {k: v for k, v in rec.items() if k in ("im_file", "im_id", "h", "w") or k in fields}


class DetDataset(paddle.io.Dataset):
    """Records + ppdet sample operators; `dataset[i]` is one transformed sample (a dict of arrays)."""

    def __init__(self, data, transforms, mode, num_classes, mixup=False):
        self.records = data["records"]
        self.data = data
        # evaluation reads the ground truth from the records, in original image coordinates
        self.fields = data["fields"] if mode == "train" else ["image"]
        self.transform = _compose(transforms, num_classes, where=f"{READER_KEYS[mode]}.sample_transforms")
        self.mixup = mixup

    def __len__(self):
        return len(self.records)

    def __getitem__(self, index):
        rec = copy.deepcopy(_strip(self.records[index], self.fields))
        if self.mixup:
            other = copy.deepcopy(_strip(self.records[np.random.randint(len(self.records))], self.fields))
            rec = [rec, other]
        try:
            return self.transform(rec)
        except Exception as e:
            path = self.records[index].get("im_file")
            detail = traceback.format_exception_only(type(e), e)[-1].strip()
            raise ConfigError(f"The data operators failed on {path}: {detail}. Check that the image reads "
                              f"and that its boxes are valid.") from e


def to_tensors(batch):
    out = {}
    for key, value in batch.items():
        if isinstance(value, np.ndarray) and value.dtype != object:
            out[key] = paddle.to_tensor(value)
        else:
            out[key] = value
    return out


class TrainCollate:
    """ppdet batch operators (resize, targets) on the samples, then stacking into tensors."""

    def __init__(self, transforms, num_classes):
        self.compose = _compose(transforms, num_classes, where="TrainReader.batch_transforms")

    def __call__(self, samples):
        from ppdet.data.utils import default_collate_fn
        samples = self.compose(list(samples))
        batch = {}
        for key in samples[0]:
            if key in ("h", "w", "flipped", "curr_iter", "im_file"):
                continue
            values = [s[key] for s in samples]
            if key.startswith("gt_") or key in ("difficult", "is_crowd"):
                shapes = {np.shape(v) for v in values}
                if len(shapes) > 1:
                    raise ConfigError(f"Cannot batch `{key}`: samples hold different numbers of boxes. Add "
                                      f"`- PadBox: {{num_max_boxes: 100}}` to TrainReader.batch_transforms.")
            batch[key] = default_collate_fn(values)
        return to_tensors(batch)


class EvalCollate:
    """Stack images (and im_shape, scale_factor); keep ground truth per image, in original coordinates."""

    def __init__(self, transforms, num_classes):
        self.compose = (_compose(transforms, num_classes, where="EvalReader.batch_transforms")
                        if transforms else None)

    def __call__(self, samples):
        samples = list(samples)
        if self.compose is not None:
            samples = self.compose(samples)
        shapes = {s["image"].shape for s in samples}
        if len(shapes) > 1:
            raise ConfigError("Evaluation images of one batch have different sizes after the EvalReader "
                              "operators; resize to a fixed size (Resize keep_ratio: false), add PadBatch, or "
                              "use EvalReader.batch_size: 1.")
        batch = {k: np.stack([s[k] for s in samples]) for k in ("image", "im_shape", "scale_factor")}
        batch = to_tensors(batch)
        batch["im_id"] = [int(np.asarray(s.get("im_id", [-1])).reshape(-1)[0]) for s in samples]
        return batch


def build_dataset(cfg, mode):
    data = load_records(cfg, mode if mode in ("train", "val") else "val")
    check_num_classes(cfg, data["names"], data.get("label_list") or data.get("anno_path"))
    reader = _reader(cfg, mode)
    num_classes = int(cfg.get("num_classes") or len(data["names"]))
    mixup = mode == "train" and reader.get("mixup_epoch", -1) != -1 and any(
        "Mixup" in t for t in reader["sample_transforms"])
    return DetDataset(data, reader["sample_transforms"], mode, num_classes, mixup=mixup)


def build_collate(cfg, mode):
    reader = _reader(cfg, mode)
    num_classes = int(cfg.get("num_classes") or len(load_records(cfg, "train" if mode == "train" else "val")["names"]))
    if mode == "train":
        return TrainCollate(reader.get("batch_transforms") or [], num_classes)
    return EvalCollate(reader.get("batch_transforms") or [], num_classes)
