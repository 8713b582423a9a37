"""PaddleDetection's distillation command as its README writes it, on data in ppdet's VOC layout, with every
weights file named by URL and served from 127.0.0.1: the student's ImageNet backbone (`pretrain_weights`
of -c, names without the `backbone.` prefix) and the teacher's weights (`pretrain_weights` of the slim
config). Downloaded once into ppdet's cache, loaded (N/M logged), read from the cache by the next run,
then the checkpoint evaluated with tools/eval.py -o weights=..."""
import os
import re

import paddle
import pytest

from slim.apps import launch
from tests.helpers.cli import run_process
from tests.helpers.det_fixtures import base_config, model_config, prepare_trees, write_yaml
from tests.helpers.weights_server import cache_env, save_pdparams, serve


@pytest.fixture(scope="module")
def readme_pair(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("det_readme"))
    data = prepare_trees(root)
    write_yaml(os.path.join(root, "_base_", "voc.yml"), base_config(data))
    teacher = write_yaml(os.path.join(root, "yolov3_teacher.yml"),
                         dict(model_config([24, 16, 16], scale=0.35), _BASE_=["_base_/voc.yml"]))
    student = dict(model_config([16, 8, 8], scale=0.25), _BASE_=["_base_/voc.yml"])
    files = os.path.join(root, "files")
    # the teacher's trained weights and the student's ImageNet backbone (keys without `backbone.`)
    task, t_cfg = launch.load_task_config(teacher)
    save_pdparams(task.build_model(t_cfg).state_dict(), os.path.join(files, "yolov3_teacher_270e_voc.pdparams"))
    s_model = task.build_model(launch.load_task_config(write_yaml(os.path.join(root, "plain.yml"), student))[1])
    backbone = {k[len("backbone."):]: v for k, v in s_model.state_dict().items() if k.startswith("backbone.")}
    save_pdparams(backbone, os.path.join(files, "MobileNetV3_small_x0_25_pretrained.pdparams"))
    return {"root": root, "teacher": teacher, "student": student, "files": files, "n_backbone": len(backbone),
            "n_teacher": len(task.build_model(t_cfg).state_dict()), "n_student": len(s_model.state_dict())}


def test_the_ppdet_readme_command_downloads_once_loads_caches_and_evaluates(readme_pair, tmp_path):
    p = readme_pair
    env = dict(cache_env(tmp_path / "home"), OMP_NUM_THREADS="1")
    with serve(p["files"]) as server:
        teacher_url = server.url("yolov3_teacher_270e_voc.pdparams")
        backbone_url = server.url("MobileNetV3_small_x0_25_pretrained.pdparams")
        student = write_yaml(os.path.join(p["root"], "yolov3_student.yml"),
                             dict(p["student"], pretrain_weights=backbone_url))
        slim_config = write_yaml(os.path.join(p["root"], "yolov3_distill.yml"), {
            "_BASE_": ["yolov3_teacher.yml"], "pretrain_weights": teacher_url, "slim": "Distill",
            "distill_loss": "DistillYOLOv3Loss", "DistillYOLOv3Loss": {"weight": 1000}})

        runs = []
        for name in ("first", "second"):
            out = tmp_path / name
            done = run_process("train", "-c", student, "--slim_config", slim_config, "--iters", 2,
                               "--save_interval", 2, "--log_iters", 1, "--save_dir", out, env=env, timeout=300)
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
            runs.append((out / "record.txt").read_text())
            # downloaded by the first run only (ppdet's download also re-reads the file's headers once)
            if name == "first":
                gets = (server.gets("yolov3_teacher_270e_voc.pdparams"),
                        server.gets("MobileNetV3_small_x0_25_pretrained.pdparams"))
                assert min(gets) >= 1
            else:
                assert (server.gets("yolov3_teacher_270e_voc.pdparams"),
                        server.gets("MobileNetV3_small_x0_25_pretrained.pdparams")) == gets
    cache = tmp_path / "home" / ".cache" / "paddle" / "weights"
    assert (cache / "yolov3_teacher_270e_voc.pdparams").is_file()
    assert (cache / "MobileNetV3_small_x0_25_pretrained.pdparams").is_file()
    first, second = runs
    n, m, t = p["n_backbone"], p["n_student"], p["n_teacher"]
    for log in runs:
        assert re.search(rf"pretrain_weights \S+: loaded {n}/{m} tensors into YOLOv3", log)
        assert re.search(rf"teacher weights \S+: loaded {t}/{t} tensors into YOLOv3", log)
        assert "DistillYOLOv3Loss on 3 YOLOv3 output levels, weight 1000 each" in log
    assert "pretrain_weights: downloading http://127.0.0.1" in first
    assert "is in the cache" in second and ": downloading http" not in second

    state = paddle.load(str(tmp_path / "first" / "iter_2" / "model.pdparams"))
    assert len(state) == m  # the student alone
    done = run_process("eval", "-c", student, "-o", f"weights={tmp_path / 'first' / 'iter_2' / 'model'}",
                       env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "mAP" in done.stdout + done.stderr


def test_the_slim_config_command_under_distributed_launch(readme_pair, tmp_path):
    """`python -m paddle.distributed.launch --nproc_per_node 2 tools/train.py -c S --slim_config D`."""
    import subprocess
    import sys

    from tests.helpers.cli import ROOT, SCRIPTS
    p = readme_pair
    task, t_cfg = launch.load_task_config(p["teacher"])
    weights = save_pdparams(task.build_model(t_cfg).state_dict(), str(tmp_path / "teacher.pdparams"))
    student = write_yaml(os.path.join(p["root"], "yolov3_student_local.yml"), p["student"])
    slim_config = write_yaml(os.path.join(p["root"], "yolov3_distill_local.yml"), {
        "_BASE_": ["yolov3_teacher.yml"], "pretrain_weights": weights, "slim": "Distill",
        "distill_loss": "DistillYOLOv3Loss", "DistillYOLOv3Loss": {"weight": 1000}})
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir",
           str(tmp_path / "log"), os.path.join(ROOT, SCRIPTS["train"]), "-c", student, "--slim_config", slim_config,
           "--iters", "2", "--save_interval", "2", "--log_iters", "1", "--save_dir", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=300)
    logs = "".join(f.read_text() for f in (tmp_path / "log").glob("workerlog.*"))
    assert done.returncode == 0, done.stderr[-2000:] + logs[-4000:]
    log = (out / "record.txt").read_text()
    assert "x 2 process(es)" in log and "distill_yolov3_2: " in log
    assert len(paddle.load(str(out / "iter_2" / "model.pdparams"))) == p["n_student"]
