"""Local dataset roots for PaddleSeg's dataset types: nothing is ever downloaded.

PaddleSeg's OpticDiscSeg, PascalVOC, ADE20K (and several medical sets) download their archive when
`dataset_root` is missing, and fail much later (or read the wrong files) when it is incomplete. Before
building a dataset, `check_dataset_root` checks the folders and files that the paddleseg class reads for
the requested mode; a missing or incomplete root is a ConfigError that names the expected layout and,
for the types PaddleSeg downloads, the archive's address. `no_downloads` then builds the dataset with
paddleseg's download function replaced by that same error, so no dataset type can start a download.

Layouts (as the paddleseg 2.8 classes read them; paths in list files are relative to dataset_root):

    OpticDiscSeg  <root>/train_list.txt, val_list.txt (test_list.txt for mode test), lines
                  "JPEGImages/N0010.jpg Annotations/N0010.png"
    Cityscapes    <root>/leftImg8bit/<mode>/<city>/*_leftImg8bit.png
                  <root>/gtFine/<mode>/<city>/*_gtFine_labelTrainIds.png
    ADE20K        <root>/images/{training,validation}/*.jpg, <root>/annotations/{training,validation}/*.png
    PascalVOC     <root>/VOC2012/ImageSets/Segmentation/{train,val,trainval}.txt (+ aug.txt for trainaug),
                  <root>/VOC2012/JPEGImages/<id>.jpg, <root>/VOC2012/SegmentationClass/<id>.png
                  (SegmentationClassAug/<id>.png for the aug.txt ids); <root> is the VOCdevkit folder
    Dataset       <root> exists; <mode>_path (relative to the working directory) lists
                  "image label" pairs relative to <root>
"""
import contextlib
import glob
import os
import sys

from slim.distill.errors import ConfigError

NO_DOWNLOAD = "This package does not download datasets"
MAX_LISTED = 3  # missing files quoted in an error


def _shown(path):
    """A path as written in the config, with its absolute form when it is relative."""
    if path is None:
        return "None"
    return repr(path) if os.path.isabs(str(path)) else f"{path!r} (= {os.path.abspath(path)})"


def _join(root, *parts):
    return os.path.join(str(root), *parts)


def _missing_files(paths):
    return [p for p in paths if not os.path.isfile(p)]


def _read_pairs(list_file, separator, root, need_label, what):
    """(image, label) paths of a PaddleSeg file list, resolved as the paddleseg classes do."""
    pairs = []
    with open(list_file, "r") as f:
        for n, line in enumerate(f, 1):
            items = line.strip().split(separator)
            if len(items) != 2:
                if need_label:
                    raise ConfigError(
                        f"{what}: line {n} of {list_file} is {line.strip()!r}; each line must be "
                        f"'image{separator or ' '}label' (paths relative to dataset_root"
                        f"{'' if separator in (None, ' ') else f', separated by {separator!r}'}).")
                pairs.append((_join(root, items[0]), None))
            else:
                pairs.append((_join(root, items[0]), _join(root, items[1])))
    return pairs


def _check_listed(pairs, list_file, what, layout):
    paths = [p for pair in pairs for p in pair if p is not None]
    missing = _missing_files(paths)
    if missing:
        shown = ", ".join(missing[:MAX_LISTED]) + (f" and {len(missing) - MAX_LISTED} more"
                                                  if len(missing) > MAX_LISTED else "")
        raise ConfigError(f"{what}: {len(missing)} of the {len(paths)} files listed in {list_file} do not exist "
                          f"(e.g. {shown}).{layout}")


class _Check:
    """Layout check for one dataset type; `where` tells users how to get the data."""

    def __init__(self, type_name, layout, where):
        self.type_name = type_name
        self.layout = layout
        self.where = where

    def fail(self, what, problem):
        raise ConfigError(f"{what}: {problem}.\n{self.type_name} reads this layout:\n{self.layout}\n{self.where}")


def _download_note(type_name, url, extra=""):
    return (f"PaddleSeg downloads {type_name} from {url} when dataset_root is missing. {NO_DOWNLOAD}: "
            f"download and unpack it yourself and set dataset_root to that folder.{extra}")


def _url(cls):
    return getattr(sys.modules.get(cls.__module__), "URL", None)


def _root_dir(check, what, root):
    if root is None:
        check.fail(what, "dataset_root is not set")
    if not os.path.isdir(str(root)):
        check.fail(what, f"dataset_root {_shown(root)} does not exist" if not os.path.exists(str(root))
                   else f"dataset_root {_shown(root)} is a file, not a folder")


def check_optic_disc(cfg, mode, what, url):
    root = cfg.get("dataset_root")
    list_name = {"train": "train_list.txt", "val": "val_list.txt"}.get(mode, "test_list.txt")
    check = _Check(
        "OpticDiscSeg",
        "  <dataset_root>/JPEGImages/*.jpg\n  <dataset_root>/Annotations/*.png   (0 = background, 1 = optic disc)\n"
        "  <dataset_root>/train_list.txt, <dataset_root>/val_list.txt   (test_list.txt for mode test)\n"
        "      one 'JPEGImages/N0010.jpg Annotations/N0010.png' per line, relative to dataset_root",
        _download_note("OpticDiscSeg", url, " To try the quick-start configs offline, "
                       "`python tools/prepare_data.py optic_disc_layout --out data/optic_disc_seg` writes the "
                       "nuclei sample data in this layout."))
    _root_dir(check, what, root)
    list_file = _join(root, list_name)
    if not os.path.isfile(list_file):
        check.fail(what, f"{list_file} does not exist (mode {mode} reads it)")
    pairs = _read_pairs(list_file, None, root, mode in ("train", "val"), what)
    _check_listed(pairs, list_file, what, f"\nOpticDiscSeg reads this layout:\n{check.layout}")


def _city_id(path, suffix):
    """'aachen/aachen_000000_000019' from .../aachen/aachen_000000_000019<suffix>."""
    return os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path)[:-len(suffix)])


def check_cityscapes(cfg, mode, what, url):
    root = cfg.get("dataset_root")
    check = _Check(
        "Cityscapes",
        f"  <dataset_root>/leftImg8bit/{mode}/<city>/*_leftImg8bit.png\n"
        f"  <dataset_root>/gtFine/{mode}/<city>/*_gtFine_labelTrainIds.png   (one per image, same names)",
        f"PaddleSeg does not download Cityscapes and neither does this package: get leftImg8bit_trainvaltest.zip "
        f"and gtFine_trainvaltest.zip from https://www.cityscapes-dataset.com/ (free registration), unpack both "
        f"into dataset_root and make the *_gtFine_labelTrainIds.png files with PaddleSeg's convert_cityscapes.py "
        f"(`pip install cityscapesscripts`).")
    _root_dir(check, what, root)
    for folder in ("leftImg8bit", "gtFine"):
        if not os.path.isdir(_join(root, folder, mode)):
            check.fail(what, f"{_join(root, folder, mode)} does not exist")
    images = sorted(glob.glob(_join(root, "leftImg8bit", mode, "*", "*_leftImg8bit.png")))
    labels = sorted(glob.glob(_join(root, "gtFine", mode, "*", "*_gtFine_labelTrainIds.png")))
    if not images:
        check.fail(what, f"no */*_leftImg8bit.png under {_join(root, 'leftImg8bit', mode)}")
    if not labels:
        check.fail(what, f"no */*_gtFine_labelTrainIds.png under {_join(root, 'gtFine', mode)} (the label "
                         f"conversion has not been run)")
    # paddleseg pairs the two sorted lists by position: a missing label would shift every later pair
    img_ids = {_city_id(p, "_leftImg8bit.png") for p in images}
    lab_ids = {_city_id(p, "_gtFine_labelTrainIds.png") for p in labels}
    if img_ids != lab_ids:
        odd = sorted(img_ids ^ lab_ids)
        check.fail(what, f"{len(images)} images and {len(labels)} labelTrainIds files do not match one to one "
                         f"(e.g. {', '.join(odd[:MAX_LISTED])} has only one of the two); images and labels are "
                         f"paired by sorted name, so every one needs its partner")


def check_ade20k(cfg, mode, what, url):
    root = cfg.get("dataset_root")
    sub = {"train": "training", "val": "validation"}.get(mode)
    check = _Check(
        "ADE20K",
        "  <dataset_root>/images/training/*.jpg, <dataset_root>/annotations/training/*.png\n"
        "  <dataset_root>/images/validation/*.jpg, <dataset_root>/annotations/validation/*.png\n"
        "      (each label has its image's name with .png; the unpacked ADEChallengeData2016 folder)",
        _download_note("ADE20K", url))
    _root_dir(check, what, root)
    if sub is None:
        check.fail(what, f"mode {mode!r}: ADE20K has only the modes 'train' and 'val'")
    img_dir, lab_dir = _join(root, "images", sub), _join(root, "annotations", sub)
    for folder in (img_dir, lab_dir):
        if not os.path.isdir(folder):
            check.fail(what, f"{folder} does not exist")
    names = sorted(os.listdir(img_dir))
    if not names:
        check.fail(what, f"{img_dir} is empty")
    labels = [_join(lab_dir, n.replace(".jpg", ".png")) for n in names]
    missing = _missing_files(labels)
    if missing:
        check.fail(what, f"{len(missing)} of the {len(names)} images in {img_dir} have no label "
                         f"(e.g. {', '.join(missing[:MAX_LISTED])})")


def check_pascal_voc(cfg, mode, what, url):
    root = cfg.get("dataset_root")
    check = _Check(
        "PascalVOC",
        "  <dataset_root>/VOC2012/ImageSets/Segmentation/train.txt, val.txt, trainval.txt   (one image id per line)\n"
        "  <dataset_root>/VOC2012/JPEGImages/<id>.jpg\n"
        "  <dataset_root>/VOC2012/SegmentationClass/<id>.png\n"
        "  mode trainaug also: ImageSets/Segmentation/aug.txt and VOC2012/SegmentationClassAug/<id>.png\n"
        "      (dataset_root is the VOCdevkit folder that holds VOC2012)",
        _download_note("PascalVOC", url, " For mode trainaug, make SegmentationClassAug with PaddleSeg's "
                                         "voc_augment.py."))
    _root_dir(check, what, root)
    voc = _join(root, "VOC2012")
    if not os.path.isdir(voc):
        hint = (f"; dataset_root points at the VOC2012 folder itself: set it to its parent "
                f"{os.path.dirname(os.path.abspath(str(root)))}"
                if os.path.isdir(_join(root, "ImageSets", "Segmentation")) else "")
        check.fail(what, f"{voc} does not exist{hint}")
    sets = _join(voc, "ImageSets", "Segmentation")
    lists = {"train": [("train.txt", "SegmentationClass")], "val": [("val.txt", "SegmentationClass")],
             "trainval": [("trainval.txt", "SegmentationClass")],
             "trainaug": [("train.txt", "SegmentationClass"), ("aug.txt", "SegmentationClassAug")]}.get(mode)
    if lists is None:
        check.fail(what, f"mode {mode!r}: PascalVOC has the modes 'train', 'val', 'trainval' and 'trainaug'")
    for list_name, label_dir in lists:
        list_file = _join(sets, list_name)
        if not os.path.isfile(list_file):
            check.fail(what, f"{list_file} does not exist (mode {mode} reads it)")
        with open(list_file) as f:
            ids = [line.strip() for line in f if line.strip()]
        pairs = [(_join(voc, "JPEGImages", i + ".jpg"), _join(voc, label_dir, i + ".png")) for i in ids]
        _check_listed(pairs, list_file, what, f"\nPascalVOC reads this layout:\n{check.layout}")


def check_file_list_dataset(cfg, mode, what, url):
    root = cfg.get("dataset_root")
    key = f"{mode}_path"
    check = _Check(
        "Dataset",
        f"  <dataset_root>/...   the images and labels\n"
        f"  {key}: a text file (its path relative to the working directory, not to dataset_root) with one\n"
        f"      'image label' pair per line, both relative to dataset_root"
        + ("" if mode != "test" else " (the label may be left out)"),
        "Write the file lists yourself or with PaddleSeg's create_dataset_list.py; "
        "`python tools/prepare_data.py nuclei --out data/nuclei` writes a small example.")
    _root_dir(check, what, root)
    path = cfg.get(key)
    if path is None:
        check.fail(what, f"mode {mode} needs `{key}`")
    if not os.path.isfile(str(path)):
        inside = _join(root, path)
        hint = (f"; it exists under dataset_root: write {key}: {inside}"
                if not os.path.isabs(str(path)) and os.path.isfile(inside) else "")
        check.fail(what, f"{key} {_shown(path)} does not exist{hint}")
    pairs = _read_pairs(path, cfg.get("separator", " "), root, mode in ("train", "val"), what)
    _check_listed(pairs, path, what, f"\nDataset reads this layout:\n{check.layout}")


CHECKS = {"OpticDiscSeg": check_optic_disc, "Cityscapes": check_cityscapes, "ADE20K": check_ade20k,
          "PascalVOC": check_pascal_voc, "Dataset": check_file_list_dataset}


def check_dataset_root(ds_cfg, mode, what, cls):
    """Raise a ConfigError when `ds_cfg` (a dataset section with `type`) points at no usable local copy.

    `mode` is the dataset's mode (train, val, ...), `what` the config key for messages, `cls` the
    paddleseg class. Types without a known layout that PaddleSeg would download need an existing root.
    """
    type_name = ds_cfg.get("type")
    mode = str(ds_cfg.get("mode", mode)).lower()
    url = _url(cls)
    check = CHECKS.get(type_name)
    if check is not None:
        check(ds_cfg, mode, what, url)
        return
    if url is not None:
        root = ds_cfg.get("dataset_root")
        if root is None or not os.path.exists(str(root)):
            problem = "dataset_root is not set" if root is None else f"dataset_root {_shown(root)} does not exist"
            raise ConfigError(f"{what}: {problem}.\n{_download_note(type_name, url)}")


def _refuse_download(url=None, *args, **kwargs):
    raise ConfigError(f"The dataset wanted to download {url}. {NO_DOWNLOAD}: download and unpack it yourself "
                      f"and set dataset_root to that folder.")


@contextlib.contextmanager
def no_downloads(cls):
    """Build a paddleseg dataset class with its module's download function replaced by a clear error."""
    module = sys.modules.get(cls.__module__)
    name = "download_file_and_uncompress"
    original = getattr(module, name, None)
    if original is None:
        yield
        return
    setattr(module, name, _refuse_download)
    try:
        yield
    finally:
        setattr(module, name, original)
