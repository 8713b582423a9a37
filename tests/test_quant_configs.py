"""Users' quantisation configs as written, each training a few iterations with this repo's configs of the same
shape: PaddleDetection's `slim: QAT` (alone, and beside a `slim: Distill` config), PaddleClas's
*_quantization.yaml (PACT, AutoAugment; also on a DistillationModel, whose teacher stays fp32) and PaddleSeg's ACT
yaml (tools/act.py); then two processes under paddle.distributed.launch."""
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest
import yaml

from slim.apps import launch
from slim.datasets import mnist
from slim.quant import state_is_quantized
from tests.helpers.cli import ROOT, logged_losses, run_tool

DET_QAT = os.path.join(ROOT, "configs", "det", "slim", "yolov3_mobilenet_v1_trees_qat.yml")
PPCLS_QAT = os.path.join(ROOT, "configs", "ppcls", "MobileNetV3_small_x0_35_mnist_quantization.yaml")
SEG_ACT = os.path.join(ROOT, "configs", "seg", "act", "deeplabv3p_resnet18_vd_nuclei_qat.yaml")


def write(path, data):
    with open(path, "w") as f:
        yaml.safe_dump(data, f)
    return str(path)


def quant_keys(state, prefix=""):
    return [k for k in state if k.startswith(prefix) and state_is_quantized([k])]


# ----- PaddleDetection ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def det(tmp_path_factory):
    from tests.helpers.det_fixtures import make_tiny_det
    from tests.helpers.det_slim_fixtures import save_random_weights
    root = tmp_path_factory.mktemp("quant_det")
    paths = make_tiny_det(str(root))
    task, cfg = launch.load_task_config(paths["student"])
    paths["fp32"] = save_random_weights(task, cfg, str(root / "student_fp32.pdparams"))
    task, cfg = launch.load_task_config(paths["teacher"])
    paths["teacher_weights"] = save_random_weights(task, cfg, str(root / "teacher.pdparams"))
    paths["root"] = root
    return paths


def test_ppdet_qat_slim_config_trains_the_quantised_student_from_pretrain_weights(det):
    save = det["root"] / "qat"
    assert run_tool("train", "-c", det["student"], "--slim_config", DET_QAT, "-o", f"pretrain_weights={det['fp32']}",
                    "--iters", 2, "--log_iters", 1, "--seed", 0, "--save_dir", save) == 0
    record = (save / "record.txt").read_text()
    for text in ("(slim: QAT): merged into the student config (pretrain_weights)", "Model before quant:",
                 "Quantized model:", "QuantizedConv2D", f"pretrain_weights {det['fp32']}", "layer(s) quantised",
                 "for 2 iterations"):  # --iters wins over the merged config
        assert text in record, text
    losses = logged_losses(save)
    assert len(losses) == 2 and all(np.isfinite(v["Train/loss"]) for _, v in losses)
    assert quant_keys(paddle.load(str(save / "iter_2" / "model.pdparams")))


def test_ppdet_distill_slim_config_with_a_quant_config_trains_a_qat_student_against_the_fp32_teacher(det):
    distill = write(det["root"] / "distill.yml", {
        "_BASE_": ["teacher.yml"], "pretrain_weights": det["teacher_weights"], "slim": "Distill",
        "distill_loss": "DistillYOLOv3Loss", "DistillYOLOv3Loss": {"weight": 10}})
    save = det["root"] / "distill_qat"
    assert run_tool("train", "-c", det["student"], "--slim_config", distill, "--quant_config", DET_QAT,
                    "-o", f"pretrain_weights={det['fp32']}", "--iters", 2, "--log_iters", 1, "--seed", 0,
                    "--save_dir", save) == 0
    record = (save / "record.txt").read_text()
    assert "DistillYOLOv3Loss on 3 YOLOv3 output levels" in record and "layer(s) quantised" in record
    assert f"pretrain_weights {det['fp32']}" in record and "teacher weights" in record
    assert "teacher: YOLOv3" in record
    losses = logged_losses(save)
    assert all(np.isfinite(v["Train/distill_yolov3_2"]) for _, v in losses)
    assert quant_keys(paddle.load(str(save / "iter_2" / "model.pdparams")))


# ----- PaddleClas --------------------------------------------------------------------------------------
def ppcls_opts(data, out):
    return ["-o", f"DataLoader.Train.dataset.image_root={data}",
            f"DataLoader.Train.dataset.cls_label_path={data}/train_list.txt",
            f"DataLoader.Eval.dataset.image_root={data}", f"DataLoader.Eval.dataset.cls_label_path={data}/val_list.txt",
            "DataLoader.Train.sampler.batch_size=8", "Global.print_batch_step=1", f"Global.output_dir={out}",
            "Global.epochs=1"]


@pytest.fixture(scope="module")
def ppcls(tmp_path_factory):
    root = tmp_path_factory.mktemp("quant_ppcls")
    data = str(root / "data")
    mnist.prepare(data, per_class=3)
    fp32 = root / "fp32"
    assert run_tool("train", "-c", os.path.join(ROOT, "configs", "ppcls", "ResNet50_vd_mnist.yaml"),
                    *ppcls_opts(data, fp32), "Arch.name=MobileNetV3_small_x0_35", "--seed", 0) == 0
    return {"root": root, "data": data, "fp32": str(fp32 / "MobileNetV3_small_x0_35" / "best_model")}


def test_paddleclas_quantization_yaml_trains_with_pact_and_autoaugment_and_evaluates(ppcls, capsys):
    out = ppcls["root"] / "qat"
    assert run_tool("train", "-c", PPCLS_QAT, *ppcls_opts(ppcls["data"], out),
                    f"Global.pretrained_model={ppcls['fp32']}", "--seed", 0) == 0
    run = out / "MobileNetV3_small_x0_35"
    record = (run / "record.txt").read_text()
    assert "QAT (Slim.quant)" in record and "PACT on the activations" in record
    assert "Global.pretrained_model" in record and "loaded 214/214" in record  # the fp32 start
    assert "Slim" not in record.split("not used by this package:")[1].split("\n")[0]
    losses = logged_losses(run)
    assert len(losses) == 4 and all(np.isfinite(v["Train/loss"]) for _, v in losses)
    state = paddle.load(str(run / "best_model" / "model.pdparams"))
    assert any(k.endswith("_act_preprocess.alpha") for k in state)
    capsys.readouterr()
    assert run_tool("eval", "-c", PPCLS_QAT, *ppcls_opts(ppcls["data"], out),
                    f"Global.pretrained_model={run / 'best_model'}") == 0
    printed = capsys.readouterr().out
    logged = [line for line in record.splitlines() if "[EVAL] #Images" in line][-1]
    assert logged.split("[EVAL]")[1].split("|")[0] in printed  # the trainer's evaluation, reproduced


def test_paddleclas_distillation_model_quantises_only_the_infer_model(ppcls):
    out = ppcls["root"] / "dist"
    w = ppcls["fp32"]
    assert run_tool("train", "-c", os.path.join(ROOT, "configs", "ppcls", "R50_vd_distill_MV3_large_x1_0_mnist.yaml"),
                    *ppcls_opts(ppcls["data"], out), "Arch.models.0.Teacher.name=MobileNetV3_small_x0_35",
                    f"Arch.models.0.Teacher.pretrained={w}", "Arch.models.1.Student.name=MobileNetV3_small_x0_35",
                    f"Arch.models.1.Student.pretrained={w}", "Slim.quant.name=pact", "--seed", 0) == 0
    run = out / "DistillationModel"
    assert "QAT applies to Student only; the other models stay fp32" in (run / "record.txt").read_text()
    state = paddle.load(str(run / "iter_4" / "model.pdparams"))
    assert quant_keys(state, "Student.") and not quant_keys(state, "Teacher.")


# ----- PaddleSeg ACT -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    from tests.helpers.seg_fixtures import make_tiny_seg
    root = tmp_path_factory.mktemp("quant_seg")
    paths = make_tiny_seg(str(root))
    task, cfg = launch.load_task_config(paths["teacher"])
    paddle.seed(2)
    paths["fp32"] = str(root / "fp32.pdparams")
    paddle.save(task.build_model(cfg).state_dict(), paths["fp32"])
    paths["root"] = root
    return paths


def test_act_yaml_trains_qat_distilled_from_the_fp32_model_and_writes_the_int8_model(seg):
    save = seg["root"] / "act"
    assert run_tool_act("--act_config_path", SEG_ACT, "--config_path", seg["teacher"], "--model_path", seg["fp32"],
                        "--save_dir", save, "--iters", 2, "--log_iters", 1, "--seed", 0) == 0
    record = (save / "record.txt").read_text()
    for text in ("Distillation.node conv2d_94.tmp_0: static-graph variable name(s)",
                 "distilling the model's output (the model output[0]) instead",
                 "Global.model_dir, Global.model_filename, Global.params_filename not used",
                 "QAT (", "Conv2D layers", "frozen fp32 copy", "distillation terms alone",
                 "lr: 0.000500"):  # TrainConfig.learning_rate, constant
        assert text in record, text
    losses = logged_losses(save)
    assert [sorted(v) for _, v in losses][0] == ["Train/act_l2_output", "Train/loss"]  # no task loss
    assert all(v["Train/loss"] == v["Train/act_l2_output"] for _, v in losses)
    assert record.count("[EVAL] #Images") == 1  # TrainConfig.eval_iter turns evaluation on: every 100, and at the end
    assert os.path.isfile(save / "model.pdiparams") and quant_keys(paddle.load(str(save / "iter_2" / "model.pdparams")))


@pytest.mark.parametrize("body,message", [
    ({"QuantPost": {"batch_size": 4}, "QuantAware": {}}, "tools/ptq.py"),
    ({"Distillation": {"node": ["x"], "loss": "kl"}, "QuantAware": {}}, "l2 or soft_label"),
    ({"QuantAware": {"quantize_op_types": ["pool2d"]}}, "quantize_op_types"),
    ({"QuantAware": {"weight_bits": 32}}, "weight_bits"),
    ({"Distillation": {"node": ["x"]}}, "no QuantAware"),
])
def test_bad_act_configs_are_clear_errors(seg, tmp_path, capsys, body, message):
    path = write(tmp_path / "act.yaml", body)
    capsys.readouterr()
    assert run_tool_act("--act_config_path", path, "--config_path", seg["teacher"], "--model_path", seg["fp32"],
                        "--save_dir", tmp_path / "out", "--iters", 1) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "out").exists()


def run_tool_act(*args):
    from slim.apps import act
    return launch.run_main(lambda: act.main([str(a) for a in args]))


# ----- two processes -----------------------------------------------------------------------------------
def test_two_processes_train_qat_and_resume_auto(tmp_path):
    from tests.helpers.cls_fixtures import make_tiny_cls
    paths = make_tiny_cls(str(tmp_path))
    q = write(tmp_path / "q.yml", {"quant": {"use_pact": True}})
    for iters in (2, 4):  # a run of 2 iterations, then --resume_model auto to 4
        log_dir = tmp_path / f"log_{iters}"
        cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", str(log_dir),
               os.path.join(ROOT, "tools", "train.py"), "-c", paths["teacher"], "--quant_config", q, "--iters",
               str(iters), "--save_interval", "2", "--log_iters", "1", "--seed", "0", "--save_dir",
               str(tmp_path / "run"), "--resume_model", "auto"]
        proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True,
                              text=True, timeout=300)
        logs = "".join(p.read_text() for p in log_dir.glob("workerlog.*"))
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + logs[-4000:]
    record = (tmp_path / "run" / "record.txt").read_text()
    assert "batch 16 x 2 process(es)" in record and "resumed from" in record and "layer(s) quantised" in record
    state = paddle.load(str(tmp_path / "run" / "iter_4" / "model.pdparams"))
    assert quant_keys(state) and np.isfinite(sum(float(v.numpy().sum()) for v in state.values()))
    assert [i for i, _ in logged_losses(tmp_path / "run")] == [1, 2, 3, 4]
