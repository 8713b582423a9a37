"""PaddleSeg dataset types read a local dataset_root and never download; a missing or incomplete root is
a ConfigError naming the layout the paddleseg class reads and where PaddleSeg would download it from."""
import os
import sys

import numpy as np
import pytest
from PIL import Image

from slim.distill.errors import ConfigError
from slim.tasks.seg.datasets import NO_DOWNLOAD, no_downloads
from slim.tasks.seg.task import Task

NORMALIZE = [{"type": "Normalize"}]


@pytest.fixture(autouse=True)
def downloads_fail_the_test(monkeypatch):
    """Any download attempt by paddleseg (its helper, or the helper's name inside a dataset module) fails."""
    import paddleseg  # noqa: F401
    from paddleseg.utils import download

    def fail(*args, **kwargs):
        pytest.fail(f"a download was attempted: {args} {kwargs}")

    monkeypatch.setattr(download, "_download_file", fail)
    monkeypatch.setattr(download, "download_file_and_uncompress", fail)
    for name, module in list(sys.modules.items()):
        if name.startswith("paddleseg.datasets.") and hasattr(module, "download_file_and_uncompress"):
            monkeypatch.setattr(module, "download_file_and_uncompress", fail)


def build(ds, mode="train"):
    return Task().build_dataset({f"{mode}_dataset": dict(ds, transforms=NORMALIZE)}, mode)


def error_of(ds, mode="train"):
    with pytest.raises(ConfigError) as e:
        build(ds, mode)
    return str(e.value)


def image(path, size=(8, 6), label=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if label:
        Image.fromarray(np.eye(size[1], size[0], dtype=np.uint8)).save(path)
    else:
        Image.fromarray(np.full((size[1], size[0], 3), 100, np.uint8)).save(path)


def write(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.writelines(line + "\n" for line in lines)


# ------------------------------------------------------------------ tiny roots in each layout

def optic_root(root):
    for split, names in (("train", ["a", "b"]), ("val", ["c"])):
        for n in names:
            image(os.path.join(root, "JPEGImages", n + ".jpg"))
            image(os.path.join(root, "Annotations", n + ".png"), label=True)
        write(os.path.join(root, f"{split}_list.txt"), [f"JPEGImages/{n}.jpg Annotations/{n}.png" for n in names])
    return str(root)


def cityscapes_root(root):
    for mode, city in (("train", "aachen"), ("val", "lindau")):
        for i in range(2):
            stem = f"{city}_{i:06d}_000019"
            image(os.path.join(root, "leftImg8bit", mode, city, stem + "_leftImg8bit.png"))
            image(os.path.join(root, "gtFine", mode, city, stem + "_gtFine_labelTrainIds.png"), label=True)
    return str(root)


def ade_root(root):
    for sub in ("training", "validation"):
        for n in ("ADE_1", "ADE_2"):
            image(os.path.join(root, "images", sub, n + ".jpg"))
            image(os.path.join(root, "annotations", sub, n + ".png"), label=True)
    return str(root)


def voc_root(root):
    voc = os.path.join(root, "VOC2012")
    for i in ("2007_000032", "2007_000033"):
        image(os.path.join(voc, "JPEGImages", i + ".jpg"))
        image(os.path.join(voc, "SegmentationClass", i + ".png"), label=True)
    write(os.path.join(voc, "ImageSets", "Segmentation", "train.txt"), ["2007_000032"])
    write(os.path.join(voc, "ImageSets", "Segmentation", "val.txt"), ["2007_000033"])
    return str(root)


def file_list_root(root):
    image(os.path.join(root, "img", "a.png"))
    image(os.path.join(root, "lab", "a.png"), label=True)
    write(os.path.join(root, "train.txt"), ["img/a.png lab/a.png"])
    return str(root)


ROOTS = {
    "OpticDiscSeg": (optic_root, {}),
    "Cityscapes": (cityscapes_root, {}),
    "ADE20K": (ade_root, {}),
    "PascalVOC": (voc_root, {}),
}


@pytest.mark.parametrize("type_name", sorted(ROOTS))
@pytest.mark.parametrize("mode", ["train", "val"])
def test_a_present_root_is_read_and_never_downloaded(tmp_path, type_name, mode):
    make, extra = ROOTS[type_name]
    root = make(tmp_path / "data")
    dataset = build({"type": type_name, "dataset_root": root, "mode": mode, **extra}, mode)
    assert len(dataset) >= 1
    sample = dataset[0]
    assert sample["img"].shape[0] == 3


def test_a_file_list_dataset_is_read(tmp_path):
    root = file_list_root(tmp_path / "data")
    dataset = build({"type": "Dataset", "dataset_root": root, "train_path": os.path.join(root, "train.txt"),
                     "num_classes": 2})
    assert len(dataset) == 1 and dataset[0]["img"].shape == (3, 6, 8)


@pytest.mark.parametrize("type_name, layout, url", [
    ("OpticDiscSeg", ["<dataset_root>/JPEGImages", "<dataset_root>/Annotations", "<dataset_root>/train_list.txt",
                      "<dataset_root>/val_list.txt", "optic_disc_layout"],
     "https://paddleseg.bj.bcebos.com/dataset/optic_disc_seg.zip"),
    ("Cityscapes", ["<dataset_root>/leftImg8bit/train/<city>/*_leftImg8bit.png",
                    "<dataset_root>/gtFine/train/<city>/*_gtFine_labelTrainIds.png", "convert_cityscapes.py"],
     "https://www.cityscapes-dataset.com/"),
    ("ADE20K", ["<dataset_root>/images/training", "<dataset_root>/annotations/training",
                "<dataset_root>/images/validation"],
     "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip"),
    ("PascalVOC", ["<dataset_root>/VOC2012/ImageSets/Segmentation/train.txt", "<dataset_root>/VOC2012/JPEGImages",
                   "<dataset_root>/VOC2012/SegmentationClass", "VOCdevkit"],
     "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"),
])
@pytest.mark.parametrize("root", ["missing", None])
def test_a_missing_root_names_the_layout_and_the_download_address(tmp_path, type_name, layout, url, root):
    path = None if root is None else str(tmp_path / "nowhere" / "optic_disc_seg")
    msg = error_of({"type": type_name, "dataset_root": path})
    assert msg.startswith("train_dataset: ")
    assert ("is not set" in msg) if root is None else (f"{path!r} does not exist" in msg)
    for piece in layout:
        assert piece in msg, piece
    assert url in msg
    assert "does not download" in msg
    assert not os.path.exists(tmp_path / "nowhere")  # nothing was created either


def test_a_missing_file_list_dataset_root_and_list(tmp_path):
    msg = error_of({"type": "Dataset", "dataset_root": str(tmp_path / "no"), "train_path": "x.txt",
                    "num_classes": 2})
    assert "does not exist" in msg and "train_path: a text file" in msg and "relative to dataset_root" in msg
    root = file_list_root(tmp_path / "data")
    msg = error_of({"type": "Dataset", "dataset_root": root, "num_classes": 2})
    assert "mode train needs `train_path`" in msg
    # a list path written relative to dataset_root (it is read from the working directory)
    msg = error_of({"type": "Dataset", "dataset_root": root, "train_path": "train.txt", "num_classes": 2})
    assert f"it exists under dataset_root: write train_path: {os.path.join(root, 'train.txt')}" in msg


def test_an_incomplete_optic_disc_root_names_what_is_missing(tmp_path):
    root = optic_root(tmp_path / "data")
    os.remove(os.path.join(root, "val_list.txt"))
    msg = error_of({"type": "OpticDiscSeg", "dataset_root": root}, "val")
    assert f"{os.path.join(root, 'val_list.txt')} does not exist (mode val reads it)" in msg
    assert "<dataset_root>/JPEGImages/*.jpg" in msg
    os.remove(os.path.join(root, "Annotations", "b.png"))
    msg = error_of({"type": "OpticDiscSeg", "dataset_root": root})
    assert "1 of the 4 files listed in" in msg and os.path.join(root, "Annotations", "b.png") in msg
    write(os.path.join(root, "train_list.txt"), ["JPEGImages/a.jpg"])
    msg = error_of({"type": "OpticDiscSeg", "dataset_root": root})
    assert "line 1 of" in msg and "'image label'" in msg


def test_a_voc2012_folder_as_root_says_to_use_its_parent(tmp_path):
    root = voc_root(tmp_path / "VOCdevkit")
    msg = error_of({"type": "PascalVOC", "dataset_root": os.path.join(root, "VOC2012")})
    assert f"set it to its parent {root}" in msg
    msg = error_of({"type": "PascalVOC", "dataset_root": root, "mode": "trainval"})
    assert "trainval.txt does not exist" in msg
    msg = error_of({"type": "PascalVOC", "dataset_root": root, "mode": "trainaug"})
    assert "aug.txt does not exist" in msg and "voc_augment.py" in msg


def test_cityscapes_without_converted_labels_or_with_unpaired_files(tmp_path):
    root = cityscapes_root(tmp_path / "cityscapes")
    os.remove(os.path.join(root, "gtFine", "train", "aachen", "aachen_000001_000019_gtFine_labelTrainIds.png"))
    msg = error_of({"type": "Cityscapes", "dataset_root": root})
    assert "do not match one to one" in msg and "aachen/aachen_000001_000019" in msg
    os.remove(os.path.join(root, "gtFine", "train", "aachen", "aachen_000000_000019_gtFine_labelTrainIds.png"))
    msg = error_of({"type": "Cityscapes", "dataset_root": root})
    assert "no */*_gtFine_labelTrainIds.png" in msg and "convert_cityscapes.py" in msg


def test_ade20k_image_without_label(tmp_path):
    root = ade_root(tmp_path / "ADEChallengeData2016")
    os.remove(os.path.join(root, "annotations", "validation", "ADE_2.png"))
    msg = error_of({"type": "ADE20K", "dataset_root": root}, "val")
    assert "1 of the 2 images" in msg and "ADE_2.png" in msg


def test_other_downloading_types_need_an_existing_root(tmp_path):
    from paddleseg.datasets import drive

    msg = error_of({"type": "DRIVE", "dataset_root": str(tmp_path / "drive")})
    assert drive.URL in msg and NO_DOWNLOAD in msg and "does not exist" in msg


def test_no_downloads_replaces_the_modules_download_function_while_building():
    from paddleseg.datasets import OpticDiscSeg, optic_disc_seg

    before = optic_disc_seg.download_file_and_uncompress
    with no_downloads(OpticDiscSeg):
        with pytest.raises(ConfigError, match="wanted to download http://x/y.zip. " + NO_DOWNLOAD):
            optic_disc_seg.download_file_and_uncompress(url="http://x/y.zip", savepath="s")
    assert optic_disc_seg.download_file_and_uncompress is before
