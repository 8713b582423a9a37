"""The segmentation workflow end to end on tiny real data: train, distil, resume, evaluate, export."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import paddle
import pytest

from slim.tasks.seg import build_component
from tests.helpers.cli import ROOT, SCRIPTS, run_tool
from tests.helpers.resume import assert_same_weights, logged_losses, run_interrupted
from tests.helpers.seg_fixtures import MODEL, make_tiny_seg


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    paths = make_tiny_seg(str(root))
    paths["root"] = root
    teacher_dir = root / "teacher"
    assert run_tool("train", "--config", paths["teacher"], "--iters", 4, "--save_interval", 2, "--do_eval",
                    "--log_iters", 2, "--seed", 0, "--save_dir", teacher_dir) == 0
    paths["teacher_weights"] = str(teacher_dir / "best_model" / "model.pdparams")
    paths["teacher_dir"] = teacher_dir
    return paths


def read(path):
    with open(path) as f:
        return f.read()


def test_teacher_run_writes_checkpoints_log_and_best_model(seg):
    run = seg["teacher_dir"]
    assert sorted(os.listdir(run / "iter_2")) == ["manifest.json", "model.pdopt", "model.pdparams",
                                                   "train_state.pdstates"]
    assert os.path.isfile(run / "iter_4" / "model.pdparams")
    assert json.loads(read(run / "best_model" / "metrics.json"))["iter"] in (2, 4)
    log = read(run / "record.txt")
    for field in ("[TRAIN] epoch: 1, iter: 2/4", "CrossEntropyLoss", "lr:", "batch_cost:", "reader_cost:",
                  "ips:", "ETA", "[EVAL] #Images: 2 mIoU:", "parameters", "GMACs"):
        assert field in log, field
    tags = {k for line in read(run / "history.jsonl").splitlines() for k in json.loads(line)}
    assert {"Train/loss", "Train/lr", "Evaluate/mIoU", "Evaluate/Acc"} <= tags
    assert not [n for n in os.listdir(run) if ".tmp-" in n]  # no half-written checkpoint left behind


def test_distilled_student_checkpoint_loads_into_a_plain_paddleseg_model(seg):
    out = seg["root"] / "distill"
    assert run_tool("distill_train", "--teacher_config", seg["teacher"], "--student_config", seg["feat"],
                    "--teacher_pretrained", seg["teacher_weights"], "--iters", 4, "--save_interval", 4,
                    "--log_iters", 2, "--seed", 0, "--save_dir", out) == 0
    log = read(out / "record.txt")
    for term in ("CrossEntropyLoss", "distill_KLLoss", "cwd_stage2"):
        assert term in log, term
    assert re.search(r"teacher weights \S+: loaded (\d+)/\1 tensors", log), "the teacher's full weights were not reported"
    state = paddle.load(str(out / "iter_4" / "model.pdparams"))
    plain = build_component(MODEL)
    assert sorted(state) == sorted(plain.state_dict())  # the student alone, nothing of the distiller
    plain.set_state_dict(state)
    connectors = paddle.load(str(out / "iter_4" / "connectors.pdparams"))
    assert connectors and not set(connectors) & set(state)


def test_resume_after_interrupt_equals_an_unbroken_run(seg):
    common = ["--teacher_config", seg["teacher"], "--student_config", seg["feat"], "--teacher_pretrained",
              seg["teacher_weights"], "--iters", 4, "--save_interval", 100, "--log_iters", 1, "--seed", 3]
    unbroken, broken = seg["root"] / "unbroken", seg["root"] / "broken"
    assert run_tool("distill_train", *common, "--save_dir", unbroken) == 0

    assert run_interrupted(2, "distill_train", *common, "--save_dir", broken) == 130  # at the third step
    assert sorted(os.listdir(broken / "iter_2")) == ["connectors.pdparams", "manifest.json", "model.pdopt",
                                                     "model.pdparams", "train_state.pdstates"]
    assert "--resume_model" in read(broken / "record.txt")
    assert run_tool("distill_train", *common, "--save_dir", broken, "--resume_model", broken / "iter_2") == 0

    assert_same_weights(unbroken / "iter_4", broken / "iter_4", files=("model.pdparams", "connectors.pdparams"))
    losses = logged_losses(unbroken / "record.txt", "iter: 4/4")
    assert losses and losses == logged_losses(broken / "record.txt", "iter: 4/4")


def test_a_new_run_does_not_overwrite_another_runs_checkpoints(seg, capsys):
    before = os.path.getmtime(seg["teacher_dir"] / "iter_4" / "model.pdparams")
    code = run_tool("train", "--config", seg["teacher"], "--iters", 2, "--save_dir", seg["teacher_dir"])
    assert code == 2
    err = capsys.readouterr().err
    assert "already holds checkpoints" in err and "--resume_model" in err and "iter_4" in err
    assert os.path.getmtime(seg["teacher_dir"] / "iter_4" / "model.pdparams") == before


def test_teacher_without_weights_is_refused(seg, capsys):
    code = run_tool("distill_train", "--teacher_config", seg["teacher"], "--student_config", seg["student"],
                    "--iters", 1, "--save_dir", seg["root"] / "no_teacher")
    assert code == 2
    err = capsys.readouterr().err
    assert "teacher has no weights" in err and "model.pretrained" in err and "--teacher_pretrained" in err
    assert not os.path.exists(seg["root"] / "no_teacher" / "iter_1")


def test_wrong_teacher_weights_name_the_mismatch(seg, tmp_path, capsys):
    other = tmp_path / "other.yml"
    other.write_text(read(seg["teacher"]).replace("ResNet18_vd", "ResNet50_vd"))
    code = run_tool("distill_train", "--teacher_config", other, "--student_config", seg["student"],
                    "--teacher_pretrained", seg["teacher_weights"], "--iters", 1, "--save_dir", tmp_path / "x")
    assert code == 2
    assert "teacher weights" in capsys.readouterr().err


def test_eval_tool_prints_paddleseg_line_and_per_class_iou(seg, capsys, tmp_path):
    assert run_tool("eval", "--config", seg["student"], "--model_path", seg["teacher_dir"] / "best_model",
                    "--save_json", tmp_path / "m.json") == 0
    out = capsys.readouterr().out
    assert "[EVAL] #Images: 2 mIoU:" in out and "Acc:" in out and "Kappa:" in out and "Dice:" in out
    assert "[EVAL] Class IoU:" in out
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert 0 <= metrics["mIoU"] <= 1 and len(metrics["class_IoU"]) == 2


def test_predict_writes_masks_and_overlays(seg, tmp_path):
    image = os.path.join(seg["data"], "images", "slice_040.png")
    assert run_tool("predict", "--config", seg["student"], "--model_path", seg["teacher_weights"],
                    "--image_path", image, "--save_dir", tmp_path) == 0
    from PIL import Image
    mask = np.asarray(Image.open(tmp_path / "pseudo_color_prediction" / "slice_040.png"))
    assert mask.shape == (256, 256)  # palette image at the input size
    assert Image.open(tmp_path / "added_prediction" / "slice_040.png").size == (256, 256)


def test_export_matches_the_dygraph_model(seg, tmp_path, capsys):
    assert run_tool("export", "--config", seg["student"], "--model_path", seg["teacher_weights"],
                    "--save_dir", tmp_path, "--check_shape", "1,3,64,64") == 0
    assert "max |saved - dygraph|" in capsys.readouterr().out
    loaded = paddle.jit.load(str(tmp_path / "model"))
    plain = build_component(MODEL)
    plain.set_state_dict(paddle.load(seg["teacher_weights"]))
    plain.eval()
    x = paddle.randn([1, 3, 96, 64])  # another shape than the check: the input spec is dynamic
    np.testing.assert_allclose(loaded(x).numpy(), plain(x)[0].numpy(), rtol=1e-4, atol=1e-4)


def test_ctrl_c_saves_a_resumable_checkpoint_and_exits_130(seg, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, os.path.join(ROOT, SCRIPTS["distill_train"]), "--teacher_config", seg["teacher"],
           "--student_config", seg["student"], "--teacher_pretrained", seg["teacher_weights"],
           "--iters", "1000", "--log_iters", "1", "--save_dir", str(out), "--device", "cpu"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = ""
    deadline = time.time() + 300
    while "iter: 2/1000" not in seen and time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, seen + rest
    saved = [n for n in os.listdir(out) if n.startswith("iter_")]
    assert len(saved) == 1 and f"--resume_model {out / saved[0]}" in seen + rest


def test_two_process_launch_trains_and_saves_once(seg, tmp_path):
    out, logs = tmp_path / "run", tmp_path / "log"
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", str(logs),
           os.path.join(ROOT, SCRIPTS["distill_train"]), "--teacher_config", seg["teacher"],
           "--student_config", seg["feat"], "--teacher_pretrained", seg["teacher_weights"], "--iters", "3",
           "--log_iters", "1", "--save_interval", "100", "--do_eval", "--seed", "0", "--save_dir", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    worker0 = (logs / "workerlog.0").read_text()
    worker1 = (logs / "workerlog.1").read_text()
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + worker0[-3000:] + worker1[-3000:]
    assert "batch 2 x 2 process(es)" in worker0 and "iter: 3/3" in worker0 and "[EVAL] #Images: 2" in worker0
    assert "[TRAIN]" not in worker1  # one log, written by rank 0
    assert sorted(n for n in os.listdir(out) if not n.startswith(".")) == [
        "best_model", "history.jsonl", "iter_3", "record.txt"]
    state = paddle.load(str(out / "iter_3" / "model.pdparams"))
    assert sorted(state) == sorted(build_component(MODEL).state_dict())


def test_epoch_mode_visualdl_and_keep_checkpoint_max(seg, tmp_path):
    out = tmp_path / "run"
    # 6 training slices, batch 2: 3 iterations per epoch
    assert run_tool("train", "--config", seg["teacher"], "--epochs", 1, "--save_interval", 1,
                    "--keep_checkpoint_max", 1, "--use_vdl", "--log_iters", 1, "--save_dir", out) == 0
    assert sorted(n for n in os.listdir(out) if n.startswith("iter_")) == ["iter_3"]
    vdl_files = [f for _, _, files in os.walk(out / "vdl") for f in files]
    assert vdl_files and os.path.getsize(os.path.join(out / "vdl", vdl_files[0])) > 0
    from visualdl import LogReader
    reader = LogReader(file_path=os.path.join(out / "vdl", vdl_files[0]))
    assert "Train/loss" in reader.get_tags()["scalar"]
    assert len(reader.get_data("scalar", "Train/loss")) == 3


def test_list_layers_tool_on_a_paddleseg_config(seg, capsys):
    assert run_tool("list_layers", "--config", seg["student"], "--input_shape", "1,3,64,64", "--max_depth", 2) == 0
    out = capsys.readouterr().out
    assert "backbone.bb_2_1" in out and "1x256x4x4" in out and "parameters" in out
    assert run_tool("list_layers", "--config", seg["student"], "--input_shape", "1,3,x") == 2


def test_resuming_with_another_model_is_a_clear_error(seg, tmp_path, capsys):
    other = tmp_path / "r50.yml"
    other.write_text(read(seg["teacher"]).replace("ResNet18_vd", "ResNet50_vd"))
    code = run_tool("train", "--config", other, "--iters", 4, "--save_dir", tmp_path / "r",
                    "--resume_model", seg["teacher_dir"] / "iter_2")
    assert code == 2
    err = capsys.readouterr().err
    assert "do not fit DeepLabV3P" in err and "shape mismatch" in err
