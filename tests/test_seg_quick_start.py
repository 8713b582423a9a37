"""PaddleSeg's distillation quick start as written: the tutorial's command on the quick-start configs
(configs/seg/quick_start/, OpticDiscSeg), with the nuclei data written in the OpticDiscSeg layout."""
import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from slim.datasets import nuclei
from slim.apps.launch import load_task_config
from tests.helpers.cli import ROOT, run_process, run_tool
from tests.helpers.weights_server import cache_env, save_archive, serve

QS = os.path.join(ROOT, "configs", "seg", "quick_start")
TEACHER = os.path.join(QS, "deeplabv3p_resnet50_os8_optic_disc_512x512_1k_teacher.yml")
STUDENT = os.path.join(QS, "deeplabv3p_resnet18_os8_optic_disc_512x512_1k_student.yml")
TRAIN, VAL = "22-27", "40-41"  # slices with nuclei; a small run


@pytest.fixture(scope="module")
def optic(tmp_path_factory):
    root = tmp_path_factory.mktemp("quick_start")
    data = str(root / "optic_disc_seg")
    assert run_tool("prepare_data", "optic_disc_layout", "--out", data, "--train_slices", TRAIN,
                    "--val_slices", VAL) == 0
    return root, data


def read_list(path):
    with open(path) as f:
        return [line.split() for line in f if line.strip()]


def test_optic_disc_layout_is_the_nuclei_data_in_paddleseg_optic_disc_form(optic, tmp_path):
    _, data = optic
    assert sorted(os.listdir(data)) == ["Annotations", "JPEGImages", "labels.txt", "prepared.json",
                                        "train_list.txt", "val_list.txt"]
    plain = str(tmp_path / "nuclei")
    nuclei.prepare(plain, train_slices=TRAIN, val_slices=VAL)
    for split, expected in (("train", range(22, 28)), ("val", range(40, 42))):
        lines = read_list(os.path.join(data, f"{split}_list.txt"))
        assert lines == [[f"JPEGImages/slice_{i:03d}.jpg", f"Annotations/slice_{i:03d}.png"] for i in expected]
        for (img_rel, lab_rel), (p_img, p_lab) in zip(lines, read_list(os.path.join(plain, f"{split}.txt"))):
            img = Image.open(os.path.join(data, img_rel))
            lab = Image.open(os.path.join(data, lab_rel))
            assert img.format == "JPEG" and img.mode == "RGB"
            assert lab.mode == "L" and set(np.unique(np.asarray(lab))) <= {0, 1}
            # the same slice as the nuclei preparer's: identical labels, images up to JPEG error
            assert np.array_equal(np.asarray(lab), np.asarray(Image.open(os.path.join(plain, p_lab))))
            diff = np.abs(np.asarray(img, np.int16) - np.asarray(Image.open(os.path.join(plain, p_img)), np.int16))
            assert diff.mean() < 2
    marker = json.load(open(os.path.join(data, "prepared.json")))
    assert marker["dataset"] == "optic_disc_layout" and marker["counts"]["val"]["images"] == 2
    # a rerun with the same options is a no-op
    assert run_tool("prepare_data", "optic_disc_layout", "--out", data, "--train_slices", TRAIN,
                    "--val_slices", VAL) == 0


def test_the_quick_start_configs_have_paddleseg_values():
    _, teacher = load_task_config(TEACHER)
    _, student = load_task_config(STUDENT)
    assert teacher["model"]["backbone"]["type"] == "ResNet50_vd"
    assert teacher["model"]["backbone"]["pretrained"].startswith("https://")
    assert student["model"]["backbone"]["type"] == "ResNet18_vd"
    for cfg in (teacher, student):
        assert cfg["model"]["type"] == "DeepLabV3P" and cfg["model"]["backbone"]["output_stride"] == 8
        assert (cfg["batch_size"], cfg["iters"]) == (4, 1000)
        for key in ("train_dataset", "val_dataset"):
            assert cfg[key]["type"] == "OpticDiscSeg" and cfg[key]["dataset_root"] == "data/optic_disc_seg"
            assert cfg[key]["transforms"][0] == {"type": "Resize", "target_size": [512, 512]}
    assert student["distill_loss"] == {"types": [{"type": "KLLoss"}], "coef": [3]}


def test_the_tutorial_runs_on_the_quick_start_configs_with_weights_from_a_server(optic):
    """Steps 2.3-2.6 of the tutorial: train the teacher (its ImageNet backbone downloaded once from a
    server, here on 127.0.0.1, and cached), put its weights in model.pretrained, distil with the
    tutorial's command, evaluate the student. Only the weights host and the data paths are changed."""
    root, data = optic
    from paddleseg.models.backbones import ResNet50_vd
    files = root / "files"
    backbone = ResNet50_vd(output_stride=8, multi_grid=[1, 2, 4]).state_dict()
    save_archive(backbone, str(files / "resnet50_vd_ssld_v2.tar.gz"), "resnet50_vd_ssld_v2")
    small = [f"train_dataset.dataset_root={data}", f"val_dataset.dataset_root={data}",
             "train_dataset.transforms.0.target_size=[64,64]", "val_dataset.transforms.0.target_size=[64,64]"]
    env = dict(cache_env(root / "home"), OMP_NUM_THREADS="1")
    with serve(str(files)) as server:
        url = server.url("resnet50_vd_ssld_v2.tar.gz")
        teacher = root / "teacher.yml"  # the shipped config, its weights host changed
        teacher.write_text(f"_base_: {TEACHER}\nmodel:\n  backbone:\n    pretrained: {url}\n")
        r = run_process("train", "--config", teacher, "--iters", 2, "--batch_size", 2, "--save_interval", 2,
                        "--seed", 0, "--save_dir", root / "teacher", "-o", *small, timeout=300, env=env)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        n = len(backbone)
        assert f"loaded {n}/{n} tensors into ResNet_vd" in (root / "teacher" / "record.txt").read_text()
        assert server.gets("resnet50_vd_ssld_v2.tar.gz") == 1
        assert (root / "home" / ".paddleseg" / "pretrained_model" / "resnet50_vd_ssld_v2" / "model.pdparams").is_file()

        trained = root / "teacher_trained.yml"  # step 2.5: the teacher's weights in model.pretrained
        trained.write_text(f"_base_: {teacher}\nmodel:\n  pretrained: {root / 'teacher' / 'iter_2' / 'model.pdparams'}\n")
        out = root / "distill"
        r = run_process("distill_train", "--student_config", STUDENT, "--teather_config", trained,
                        "--do_eval", "--use_vdl", "--save_interval", 2, "--num_workers", 0, "--seed", 0,
                        "--save_dir", out, "--iters", 2, "--batch_size", 2, "--log_iters", 1, "-o", *small,
                        timeout=300, env=env)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert server.gets("resnet50_vd_ssld_v2.tar.gz") == 1  # a teacher with full weights needs no backbone file
    log = (out / "record.txt").read_text()
    for piece in ("iter: 2/2", "CrossEntropyLoss", "distill_KLLoss", "[EVAL] #Images: 2 mIoU:"):
        assert piece in log, piece
    assert re.search(r"teacher weights \S+: loaded (\d+)/\1 tensors into DeepLabV3P", log)
    assert os.path.isfile(out / "iter_2" / "model.pdparams")
    best = json.loads((out / "best_model" / "metrics.json").read_text())
    # the final evaluation (the only one here: iteration 2 is the last) reaches VisualDL
    from visualdl import LogReader
    (record,) = os.listdir(out / "vdl")
    scalars = LogReader(file_path=str(out / "vdl" / record)).get_data("scalar", "Evaluate/mIoU")
    assert [(s.id, round(s.value, 4)) for s in scalars] == [(2, round(best["mIoU"], 4))]

    r = run_process("eval", "--config", STUDENT, "--model_path", out / "best_model" / "model.pdparams",
                    "-o", *small, timeout=300, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    line = next(ln for ln in (r.stdout + r.stderr).splitlines() if "[EVAL] #Images: 2 mIoU:" in ln)
    assert float(line.split("mIoU:")[1].split()[0]) == pytest.approx(best["mIoU"], abs=1e-4)
