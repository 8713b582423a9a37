"""Aerial tree crowns (deepforest sample data) cut into tiles, as a Pascal VOC dataset for ppdet.

Layout written under OUT:

    JPEGImages/<image>_x<X>_y<Y>.jpg   tiles of about --tile px (X, Y: offset in the source image)
    Annotations/<image>_x<X>_y<Y>.xml  VOC xml: size, object/name, bndbox xmin ymin xmax ymax, difficult 0
    train.txt, val.txt                 "JPEGImages/t.jpg Annotations/t.xml"
    label_list.txt                     one class per line (line number = class id)
    prepared.json                      parameters and counts

Load with ppdet: VOCDataSet(dataset_dir=OUT, image_dir='', anno_path='train.txt',
label_list='label_list.txt'); image_dir must be '' because the list paths are relative to OUT.

The split is by source image (tiles of one image are correlated and share borders), never by tile.
Source images without an xml are skipped: with no annotation we cannot tell "no trees" from "not labelled".
"""
import os
import re
import sys
import xml.etree.ElementTree as ET

import numpy as np
from PIL import Image

from slim.distill.errors import ConfigError

from .common import build_dataset, check_overwrite_target, package_dir, write_lines

PIP = "deepforest==2.1.0"
# Default validation images: a held-out image of the training site (YELL) and the only image of a
# site with no training image at all (SOAP). Training keeps 2019_YELL_2_528000_4978000_image_crop2 and
# OSBS_029, the training set the measured notes (anchors, timings) were made on.
DEFAULT_VAL = "2019_YELL_2_541000_4977000_image_crop,SOAP_061"
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def default_source():
    return os.path.join(package_dir("deepforest", PIP), "data")


def _text(node, path, xml_path):
    found = node.find(path)
    if found is None or found.text is None:
        raise ConfigError(f"{xml_path}: missing <{path}>; fix or remove this annotation file")
    return found.text.strip()


def read_voc(xml_path):
    """(image file name, [(name, xmin, ymin, xmax, ymax)]) of one VOC xml; errors name the file."""
    try:
        root = ET.parse(xml_path).getroot()
    except (ET.ParseError, OSError) as e:
        raise ConfigError(f"{xml_path} is not a readable VOC xml ({e}); fix or remove this file") from None
    boxes = []
    for obj in root.findall("object"):
        try:
            box = [float(_text(obj, f"bndbox/{k}", xml_path)) for k in ("xmin", "ymin", "xmax", "ymax")]
        except ValueError:
            raise ConfigError(f"{xml_path}: a bndbox coordinate is not a number; fix this file") from None
        boxes.append((_text(obj, "name", xml_path), *box))
    filename = root.findtext("filename")
    return (filename.strip() if filename else None), boxes


def _find_image(source, stem, filename, xml_path):
    candidates = ([filename] if filename else []) + [stem + ext for ext in IMAGE_EXTS]
    for name in candidates:
        path = os.path.join(source, name)
        if os.path.isfile(path):
            return path
    raise ConfigError(f"{xml_path}: no image found for it (tried {', '.join(candidates)} in {source})")


def _edges(size, tile):
    # round(size / tile) tiles of equal size: a 400 px image gives 2 tiles of 200 px rather than
    # one of 256 and a 144 px sliver; tiles stay "about" --tile px.
    n = max(1, int(round(size / tile)))
    return np.linspace(0, size, n + 1).round().astype(int)


def cut_tiles(width, height, boxes, tile):
    """Yield (x0, y0, x1, y1, kept, dropped) for each tile: kept = [(box index, name, tile coords)],
    dropped = number of box parts left out.

    Pixel coordinates are inclusive (VOC style): a tile covers x0..x1-1, so boxes are clipped to
    [0, w-1] in the tile. A box part is dropped when its clipped area is zero or less than half the
    box: a box across a border is then kept in the tile holding most of it and dropped from the other.
    """
    for y0, y1 in zip(_edges(height, tile)[:-1], _edges(height, tile)[1:]):
        for x0, x1 in zip(_edges(width, tile)[:-1], _edges(width, tile)[1:]):
            kept, dropped = [], 0
            for k, (name, bx0, by0, bx1, by1) in enumerate(boxes):
                if bx1 < x0 or bx0 > x1 - 1 or by1 < y0 or by0 > y1 - 1:
                    continue  # not in this tile at all
                cx0, cy0 = max(bx0, x0), max(by0, y0)
                cx1, cy1 = min(bx1, x1 - 1), min(by1, y1 - 1)
                area = max(0.0, cx1 - cx0) * max(0.0, cy1 - cy0)
                full = max(0.0, bx1 - bx0) * max(0.0, by1 - by0)
                if area <= 0 or area < 0.5 * full:
                    dropped += 1
                    continue
                kept.append((k, name, cx0 - x0, cy0 - y0, cx1 - x0, cy1 - y0))
            yield int(x0), int(y0), int(x1), int(y1), kept, dropped


def voc_xml(filename, width, height, boxes):
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "JPEGImages"
    ET.SubElement(root, "filename").text = filename
    size = ET.SubElement(root, "size")
    for k, v in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, k).text = str(v)
    ET.SubElement(root, "segmented").text = "0"
    for name, x0, y0, x1, y1 in boxes:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "0"
        bb = ET.SubElement(obj, "bndbox")
        for k, v in zip(("xmin", "ymin", "xmax", "ymax"), (x0, y0, x1, y1)):
            ET.SubElement(bb, k).text = f"{v:g}"
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def _names(text):
    return [n.strip() for n in str(text).split(",") if n.strip()]


def prepare(out, source=None, tile=256, val_images=DEFAULT_VAL, single_class="Tree", keep_empty=False,
            overwrite=False):
    """Write the dataset into `out`; `single_class=None` keeps the original class names."""
    source = os.path.abspath(source) if source else default_source()
    if not os.path.isdir(source):
        raise ConfigError(f"--source {source} is not a folder; give the folder holding the VOC *.xml and images")
    if int(tile) != tile or tile < 32:
        raise ConfigError(f"--tile must be an integer of at least 32 px, got {tile}")
    xmls = sorted(f for f in os.listdir(source) if f.lower().endswith(".xml"))
    if not xmls:
        raise ConfigError(f"--source {source} holds no *.xml annotation files")
    stems = [os.path.splitext(f)[0] for f in xmls]
    val = _names(val_images)
    unknown = [n for n in val if n not in stems]
    if unknown:
        raise ConfigError(f"--val_images: no annotated image named {', '.join(unknown)}; "
                          f"the annotated images are: {', '.join(stems)}")
    if not val or len(set(val)) == len(stems):
        raise ConfigError(f"--val_images must name at least one and not all of the annotated images "
                          f"({', '.join(stems)})")
    check_overwrite_target(out, source)
    # Parse everything before writing anything, so a bad xml fails fast and names its file.
    sources = []
    for f, stem in zip(xmls, stems):
        xml_path = os.path.join(source, f)
        filename, boxes = read_voc(xml_path)
        sources.append((stem, _find_image(source, stem, filename, xml_path), boxes))
    skipped = sorted(f for f in os.listdir(source) if f.lower().endswith(IMAGE_EXTS)
                     and os.path.splitext(f)[0] not in stems)
    params = {"source": source, "tile": int(tile), "val_images": sorted(val), "single_class": single_class,
              "keep_empty": bool(keep_empty)}

    def build(tmp):
        os.makedirs(os.path.join(tmp, "JPEGImages"))
        os.makedirs(os.path.join(tmp, "Annotations"))
        lines = {"train": [], "val": []}
        counts = {s: {"images": {}, "tiles": 0, "empty_tiles_kept": 0, "empty_tiles_dropped": 0,
                      "boxes": {}, "source_boxes": 0, "boxes_lost": 0, "parts_dropped": 0} for s in lines}
        for stem, image_path, boxes in sources:
            split = "val" if stem in val else "train"
            c = counts[split]
            per_image = c["images"][stem] = {"tiles": 0, "boxes": 0}
            c["source_boxes"] += len(boxes)
            seen = set()  # source boxes kept in at least one tile
            if single_class:
                boxes = [(single_class, *b[1:]) for b in boxes]
            try:
                im = Image.open(image_path).convert("RGB")
            except OSError as e:
                raise ConfigError(f"{image_path} cannot be read as an image ({e}); fix or remove it") from None
            # Names go into space-separated file lists: no whitespace in them.
            safe = re.sub(r"\s+", "_", stem)
            for x0, y0, x1, y1, kept, dropped in cut_tiles(im.width, im.height, boxes, tile):
                c["parts_dropped"] += dropped
                seen.update(b[0] for b in kept)
                kept = [b[1:] for b in kept]
                # Empty tiles are negatives: always kept in val (they test false positives),
                # in train only on request (ppdet skips them unless allow_empty anyway).
                if not kept and split == "train" and not keep_empty:
                    c["empty_tiles_dropped"] += 1
                    continue
                c["empty_tiles_kept"] += not kept
                name = f"{safe}_x{x0:04d}_y{y0:04d}"
                im.crop((x0, y0, x1, y1)).save(os.path.join(tmp, "JPEGImages", name + ".jpg"), quality=95)
                with open(os.path.join(tmp, "Annotations", name + ".xml"), "w") as f:
                    f.write(voc_xml(name + ".jpg", x1 - x0, y1 - y0, kept))
                lines[split].append(f"JPEGImages/{name}.jpg Annotations/{name}.xml")
                c["tiles"] += 1
                per_image["tiles"] += 1
                per_image["boxes"] += len(kept)
                for b in kept:
                    c["boxes"][b[0]] = c["boxes"].get(b[0], 0) + 1
            c["boxes_lost"] += len(boxes) - len(seen)
        classes = sorted(set(counts["train"]["boxes"]) | set(counts["val"]["boxes"]))
        if single_class and not classes:
            classes = [single_class]
        for split, ls in lines.items():
            write_lines(os.path.join(tmp, f"{split}.txt"), ls)
        write_lines(os.path.join(tmp, "label_list.txt"), classes)
        return {"counts": counts, "classes": classes, "skipped_unannotated": skipped,
                "lists": {f"{s}.txt": {"lines": len(ls), "path_columns": 2} for s, ls in lines.items()}}

    marker, built = build_dataset(out, "trees", params, build, overwrite)
    if built:
        print(f"trees: wrote {out} (tiles of about {tile} px, split by source image)")
        for split in ("train", "val"):
            c = marker["counts"][split]
            boxes = ", ".join(f"{k} {v}" for k, v in sorted(c["boxes"].items())) or "none"
            print(f"  {split:5s} {c['tiles']:3d} tiles ({c['empty_tiles_kept']} empty kept, "
                  f"{c['empty_tiles_dropped']} empty dropped), boxes: {boxes} from {c['source_boxes']} source boxes; "
                  f"dropped at tile borders: {c['parts_dropped']} box parts under half a box, "
                  f"{c['boxes_lost']} boxes kept in no tile")
            print("        from " + ", ".join(f"{k} ({v['tiles']} tiles, {v['boxes']} boxes)"
                                        for k, v in c["images"].items()))
        if single_class:
            print(f"  every class mapped to {single_class!r} (--keep_classes keeps Tree/Alive/Dead)")
        only_val = set(marker["counts"]["val"]["boxes"]) - set(marker["counts"]["train"]["boxes"])
        if only_val:
            print(f"  warning: classes {', '.join(sorted(only_val))} occur in val but never in train", file=sys.stderr)
        if marker["skipped_unannotated"]:
            print(f"  skipped (no xml): {', '.join(marker['skipped_unannotated'])}")
    return marker
