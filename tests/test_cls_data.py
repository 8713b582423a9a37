"""Classification datasets and transforms: file lists, class folders, PaddleClas spellings, clear errors."""
import os

import numpy as np
import pytest
from PIL import Image

from slim.distill.errors import ConfigError
from slim.tasks.cls import Task
from slim.tasks.cls.data import Compose, ImageFolder, build_dataset, cls_collate


def make_folder(root, counts, size=(12, 10)):
    """root/<class>/<i>.png with a known grey value per image: 10 * class + i."""
    rng = np.random.default_rng(0)
    for c, n in counts.items():
        os.makedirs(os.path.join(root, str(c)), exist_ok=True)
        for i in range(n):
            img = np.full(size[::-1], 10 * int(c) + i, dtype=np.uint8)
            img[0, 0] = rng.integers(0, 255)
            Image.fromarray(img).save(os.path.join(root, str(c), f"{i:02d}.png"))
    return root


def test_image_folder_orders_numeric_classes_numerically(tmp_path):
    root = make_folder(str(tmp_path / "val"), {c: 2 for c in (0, 1, 2, 10)})
    ds = ImageFolder(root, color="gray")
    assert ds.class_names == ["0", "1", "2", "10"]
    assert ds.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    sample = ds[3]
    assert sample["img"].shape == (1, 10, 12) and sample["img"].dtype == np.float32
    np.testing.assert_allclose(sample["img"][0, 5, 5], 11 / 255.0, rtol=1e-6)  # class "1", image 1, no Normalize
    rgb = ImageFolder(root)
    assert rgb[0]["img"].shape == (3, 10, 12)


def test_file_list_reads_paddleclas_lines_and_spellings(tmp_path):
    make_folder(str(tmp_path / "train"), {0: 2, 1: 2})
    (tmp_path / "train_list.txt").write_text("train/0/00.png 0\ntrain/1/01.png 1\n\ntrain/0/01.png 0\n")
    ds = build_dataset({"name": "ImageNetDataset", "image_root": str(tmp_path),
                        "cls_label_path": str(tmp_path / "train_list.txt"), "color": "gray",
                        "transform_ops": [{"DecodeImage": {"to_rgb": True}},
                                          {"NormalizeImage": {"scale": "1.0/255.0", "mean": [0.5], "std": [0.25]}},
                                          {"ToCHWImage": None}]})
    assert len(ds) == 3 and ds.labels.tolist() == [0, 1, 0]
    x = ds[1]["img"]
    np.testing.assert_allclose(x[0, 5, 5], (11 / 255.0 - 0.5) / 0.25, rtol=1e-5)
    batch = cls_collate([ds[0], ds[1]])
    assert batch["img"].shape == [2, 1, 10, 12] and batch["label"].numpy().tolist() == [0, 1]


def test_transforms_crop_pad_flip_resize(tmp_path):
    img = np.arange(10 * 12, dtype=np.uint8).reshape(10, 12, 1)
    np.random.seed(0)
    out = Compose([{"type": "RandomCrop", "size": 10, "padding": 2}])(img)
    assert out.shape == (1, 10, 10)
    centre = Compose([{"type": "CenterCrop", "size": [6, 4]}])(img)
    np.testing.assert_allclose(centre[0] * 255, img[3:7, 3:9, 0], rtol=1e-6)
    flipped = Compose([{"type": "RandomHorizontalFlip", "prob": 1.0}])(img)
    np.testing.assert_allclose(flipped[0] * 255, img[:, ::-1, 0], rtol=1e-6)
    assert Compose([{"type": "Resize", "size": 32}])(img).shape == (1, 32, 32)
    assert Compose([{"type": "ResizeImage", "resize_short": 20}])(img).shape == (1, 20, 24)
    with pytest.raises(ConfigError, match="Unknown classification transform 'Blur'"):
        Compose([{"type": "Blur"}])


def test_an_image_that_does_not_decode_is_named(tmp_path):
    root = make_folder(str(tmp_path / "val"), {0: 2, 1: 2})
    bad = os.path.join(root, "1", "01.png")
    with open(bad, "wb") as f:
        f.write(b"this is not a png")
    ds = ImageFolder(root)  # lazy decoding: the error comes with the sample
    ds[0]
    with pytest.raises(ConfigError, match=r"Cannot decode image .*1/01\.png"):
        ds[3]
    with pytest.raises(ConfigError, match=r"Cannot decode image .*1/01\.png"):
        ImageFolder(root, cache=True)  # decoding everything up front names it at once


@pytest.mark.parametrize("pil_fills_truncated_files", [False, True])  # True: as after importing ppdet.engine
def test_a_truncated_image_is_named(tmp_path, monkeypatch, pil_fills_truncated_files):
    from PIL import ImageFile
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", pil_fills_truncated_files)
    root = make_folder(str(tmp_path / "val"), {0: 1}, size=(64, 64))
    path = os.path.join(root, "0", "00.png")
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:len(data) // 2])
    with pytest.raises(ConfigError, match=r"Cannot decode image .*0/00\.png"):
        ImageFolder(root)[0]
    assert ImageFile.LOAD_TRUNCATED_IMAGES is pil_fills_truncated_files  # put back


def test_an_empty_class_folder_is_an_error(tmp_path):
    root = make_folder(str(tmp_path / "train"), {0: 2, 1: 2})
    os.makedirs(os.path.join(root, "2"))
    (tmp_path / "train" / "2" / "notes.txt").write_text("no images here")
    with pytest.raises(ConfigError, match=r"Class folder .*train/2 \(class 2, '2'\) holds no images"):
        ImageFolder(root)


def test_missing_list_file_root_and_images_are_clear(tmp_path):
    with pytest.raises(ConfigError, match=r"File list not found: .*nope\.txt.*prepare_data\.py mnist"):
        build_dataset({"type": "ClsFileList", "dataset_root": str(tmp_path), "file_list": str(tmp_path / "nope.txt")})
    with pytest.raises(ConfigError, match=r"ImageFolder dataset_root not found"):
        build_dataset({"type": "ImageFolder", "dataset_root": str(tmp_path / "absent")})
    (tmp_path / "list.txt").write_text("a.png 0\nb.png 1\n")
    with pytest.raises(ConfigError, match=r"names 2 image\(s\) that do not exist, e\.g\. .*a\.png"):
        build_dataset({"type": "ClsFileList", "dataset_root": str(tmp_path), "file_list": str(tmp_path / "list.txt")})
    (tmp_path / "bad.txt").write_text("a.png zero\n")
    with pytest.raises(ConfigError, match=r"bad\.txt, line 1: expected 'path label'"):
        build_dataset({"type": "ClsFileList", "dataset_root": str(tmp_path), "file_list": str(tmp_path / "bad.txt")})
    with pytest.raises(ConfigError, match="unknown dataset type 'Cifar'"):
        build_dataset({"type": "Cifar"})


def test_labels_beyond_num_classes_and_channel_mismatch_are_errors(tmp_path):
    root = make_folder(str(tmp_path / "val"), {c: 1 for c in range(4)})
    task = Task()
    cfg = {"model": {"type": "ConvNet", "num_classes": 3, "in_channels": 1},
           "val_dataset": {"type": "ImageFolder", "dataset_root": root, "color": "gray"}}
    with pytest.raises(ConfigError, match=r"labels \[3\] outside \[0, 2\]"):
        task.build_dataset(cfg, "val")
    cfg["model"] = {"type": "ConvNet", "num_classes": 4}
    with pytest.raises(ConfigError, match=r"reads gray images \(1 channel\(s\)\) but the model takes in_channels: 3"):
        task.build_dataset(cfg, "val")
    with pytest.raises(ConfigError, match="no `train_dataset`"):
        task.build_dataset(cfg, "train")
