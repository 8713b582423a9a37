"""PaddleDetection's YOLOv3 distillation workflow end to end on tiny real data: train the teacher, distil, resume, eval, infer, export,
two processes, and the shipped YOLOv3 R34 -> MobileNetV1 configs."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import paddle
import pytest

from slim.apps import launch
from slim.engine.checkpoint import apply_state
from tests.helpers.cli import ROOT, SCRIPTS, run_tool
from tests.helpers.det_fixtures import SIZE, make_tiny_det
from tests.helpers.resume import assert_same_weights, run_interrupted



@pytest.fixture(scope="module")
def det(tmp_path_factory):
    root = tmp_path_factory.mktemp("det")
    paths = make_tiny_det(str(root))
    paths["root"] = root
    teacher_dir = root / "teacher"
    assert run_tool("train", "-c", paths["teacher"], "--iters", 3, "--save_interval", 3, "--do_eval",
                    "--log_iters", 1, "--seed", 0, "--save_dir", teacher_dir) == 0
    paths["teacher_dir"] = teacher_dir
    paths["teacher_weights"] = str(teacher_dir / "best_model" / "model.pdparams")
    return paths


def read(path):
    with open(path) as f:
        return f.read()


def distill_args(det, *extra):
    return ["-c", det["student"], "-t", det["teacher"], "--teacher_pretrained", det["teacher_weights"],
            "--log_iters", 1, "--seed", 0, *extra]


def test_teacher_run_logs_ppdet_loss_terms_and_voc_map(det):
    log = read(det["teacher_dir"] / "record.txt")
    for field in ("loss_xy", "loss_wh", "loss_obj", "loss_cls", "[EVAL] #Images: 2 mAP@0.5 (VOC, 11-point)",
                  "[EVAL] Class AP@0.5: Tree", "batch 2 x 1 process(es)"):
        assert field in log, field
    assert json.loads(read(det["teacher_dir"] / "best_model" / "metrics.json"))["iter"] == 3


def test_distilled_student_checkpoint_loads_into_a_plain_ppdet_model(det):
    out = det["root"] / "distill"
    assert run_tool("distill_train", *distill_args(det, "--iters", 2, "--save_interval", 2, "--save_dir", out)) == 0
    log = read(out / "record.txt")
    for term in ("l2_out0", "obj_out1", "neck2", "fsp12", "soft_cls0", "loss_obj",
                 "teacher runs in eval mode under no_grad and stops at its head outputs"):
        assert term in log, term
    assert re.search(r"teacher weights \S+: loaded (\d+)/\1 tensors", log), "the teacher's full weights were not reported"
    state = paddle.load(str(out / "iter_2" / "model.pdparams"))
    task, cfg = launch.load_task_config(det["student"])
    plain = task.build_model(cfg)
    assert sorted(state) == sorted(plain.state_dict())  # the student alone
    apply_state(plain, state, "the distilled student's weights")  # names and shapes, strictly
    connectors = paddle.load(str(out / "iter_2" / "connectors.pdparams"))
    assert connectors and not set(connectors) & set(state)


def test_resume_after_interrupt_equals_an_unbroken_run(det):
    common = distill_args(det, "--iters", 4, "--save_interval", 100)
    unbroken, broken = det["root"] / "unbroken", det["root"] / "broken"
    assert run_tool("distill_train", *common, "--save_dir", unbroken) == 0
    assert run_interrupted(2, "distill_train", *common, "--save_dir", broken) == 130  # at the third step
    assert run_tool("distill_train", *common, "--save_dir", broken, "-r", broken / "iter_2") == 0
    assert_same_weights(unbroken / "iter_4", broken / "iter_4", files=("model.pdparams", "connectors.pdparams"))


def test_eval_prints_voc_map_for_student_and_teacher_alike(det, capsys, tmp_path):
    weights = det["teacher_dir"] / "iter_3"  # a checkpoint folder; `-o weights=` as in PaddleDetection
    assert run_tool("eval", "-c", det["teacher"], "-o", f"weights={weights}", "--save_json", tmp_path / "m.json") == 0
    out = capsys.readouterr().out
    assert "[EVAL] #Images: 2 mAP@0.5 (VOC, 11-point):" in out and "[EVAL] Class AP@0.5: Tree" in out
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert 0 <= metrics["mAP"] <= 1 and list(metrics["class_AP"]) == ["Tree"]
    student = det["root"] / "distill" / "iter_2" / "model.pdparams"
    assert run_tool("eval", "-c", det["student"], "-o", f"weights={student}", "map_type=integral") == 0
    assert "mAP@0.5 (VOC, area)" in capsys.readouterr().out


def test_infer_draws_boxes_and_writes_bbox_json(det, tmp_path, capsys):
    from PIL import Image
    image = os.path.join(det["data"], "JPEGImages", os.listdir(os.path.join(det["data"], "JPEGImages"))[0])
    assert run_tool("infer", "-c", det["teacher"], "--infer_img", image, "--output_dir", tmp_path,
                    "--draw_threshold", 0.0, "-o", f"weights={det['teacher_weights']}",
                    # a 3-iteration teacher scores below ppdet's thresholds: keep every box
                    "BBoxPostProcess.decode.conf_thresh=0.0", "BBoxPostProcess.nms.score_threshold=0.0") == 0
    assert "box(es) with score >= 0.0" in capsys.readouterr().out
    drawn = Image.open(tmp_path / os.path.basename(image))
    assert drawn.size == Image.open(image).size
    boxes = json.loads((tmp_path / "bbox.json").read_text())
    assert boxes and {"image", "label", "score", "bbox"} <= set(boxes[0]) and boxes[0]["label"] == "Tree"
    assert np.abs(np.asarray(drawn, dtype=float) - np.asarray(Image.open(image), dtype=float)).sum() > 0


def test_export_matches_the_dygraph_model(det, tmp_path, capsys):
    assert run_tool("export", "-c", det["teacher"], "--model_path", det["teacher_weights"], "--save_dir", tmp_path,
                    "--check_shape", f"1,3,{SIZE},{SIZE}", "-o", "BBoxPostProcess.decode.conf_thresh=0.0",
                    "BBoxPostProcess.nms.score_threshold=0.0") == 0
    assert "max |saved - dygraph|" in capsys.readouterr().out


def test_teacher_without_weights_is_refused(det, capsys):
    code = run_tool("distill_train", "-c", det["student"], "-t", det["teacher"], "--iters", 1,
                    "--save_dir", det["root"] / "no_teacher")
    assert code == 2
    err = capsys.readouterr().err
    assert "teacher has no weights" in err and "--teacher_pretrained" in err


def test_two_processes_scale_lr_and_keep_in_step(det):
    log_dir = det["root"] / "launch_logs"
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", str(log_dir),
           os.path.join(ROOT, SCRIPTS["distill_train"])] + [str(a) for a in distill_args(
               det, "--iters", 2, "--save_interval", 2, "--save_dir", det["root"] / "ddp")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    log = read(log_dir / "workerlog.0")
    assert proc.returncode == 0, log[-3000:]
    assert "batch 2 x 2 process(es)" in log
    assert "differs from the config's reference batch 2: learning rate scaled x2" in log
    assert os.path.isfile(det["root"] / "ddp" / "iter_2" / "model.pdparams")


def test_shipped_yolov3_r34_to_mobilenet_v1_pair_distils(det, tmp_path):
    """The ResNet34 -> MobileNetV1 configs, with -o overrides for the tiny data and 64 px inputs (PaddleDetection's `-o` form)."""
    data = det["data"]
    opts = ["-o", f"TrainDataset.dataset_dir={data}", f"EvalDataset.dataset_dir={data}",
            "TrainDataset.anno_path=train_tiny.txt", "EvalDataset.anno_path=val_tiny.txt",
            "TrainReader.batch_size=2", f"TrainReader.batch_transforms.0.BatchRandomResize.target_size=[{SIZE}]"]
    teacher = tmp_path / "teacher.yml"  # the shipped teacher without its (not yet trained) weights
    teacher.write_text(f"_BASE_: ['{ROOT}/configs/det/yolov3_r34_trees_teacher.yml']\nweights: null\n"
                       f"TrainDataset: {{dataset_dir: {data}}}\n")
    for student in ("yolov3_mobilenet_v1_trees_student.yml", "yolov3_mobilenet_v1_trees_student_objdistill.yml"):
        out = tmp_path / student
        assert run_tool("distill_train", "-c", os.path.join(ROOT, "configs/det", student), "-t", teacher,
                        "--allow_untrained_teacher", "--iters", 1, "--save_interval", 1, "--log_iters", 1,
                        "--save_dir", out, *opts) == 0
        log = read(out / "record.txt")
        assert "teacher: YOLOv3" in log and "learning rate scaled x0.25" in log
        assert ("l2_out2" in log) if "objdistill" not in student else ("obj_distill_2" in log)


def test_shipped_nuclei_pair_distils_on_prepared_nuclei_boxes(tmp_path, capsys):
    """The benchmark's configs (configs/det/ppyolo_tiny_nuclei_*.yml) on a few slices prepared by the CLI."""
    data = tmp_path / "nuclei_boxes"
    assert run_tool("prepare_data", "nuclei_boxes", "--out", data, "--train_slices", "26-28",
                    "--val_slices", "40-41") == 0
    opts = ["-o", f"TrainDataset.dataset_dir={data}", f"EvalDataset.dataset_dir={data}", "TrainReader.batch_size=2",
            f"TrainReader.batch_transforms.0.BatchRandomResize.target_size=[{SIZE}]"]
    teacher = tmp_path / "teacher.yml"  # the shipped teacher without its (not yet trained) weights
    teacher.write_text(f"_BASE_: ['{ROOT}/configs/det/ppyolo_tiny_nuclei_teacher.yml']\nweights: null\n"
                       f"TrainDataset: {{dataset_dir: {data}}}\n")
    out = tmp_path / "distill"
    assert run_tool("distill_train", "-c", os.path.join(ROOT, "configs/det/ppyolo_tiny_nuclei_student.yml"),
                    "-t", teacher, "--allow_untrained_teacher", "--iters", 2, "--save_interval", 2, "--do_eval",
                    "--log_iters", 1, "--save_dir", out, *opts) == 0
    assert "[DATA] TrainDataset: 3 images (0 without boxes), 57 boxes" in capsys.readouterr().out
    log = read(out / "record.txt")
    assert "[EVAL] #Images: 2 mAP@0.5" in log
    for level in range(3):
        assert f"distill pair 'l2_out{level}' (student 'yolo_head.yolo_output.{level}'" in log
        assert f"L2Loss), weight 10.0" in log and f"l2_out{level}: " in log
