"""`--check` (slim/engine/check.py, slim/apps/check.py) on tiny real MNIST runs: a healthy pair reports nothing and
exits 0; an untrained teacher, a teacher config with another normalisation, a term 100x too large, a pair that
overflows fp16 and a detached student side are each flagged (exit 3) with the fix named; the weight it suggests
brings the gradient ratio to 1; --check_then_train trains only when nothing is flagged, and then to the weights of a
run without the check; a PaddleClas DistillationModel and a ppdet --slim_config run are checked; bad input exits 2."""
import json
import os

import numpy as np
import paddle
import pytest

from slim.engine.check_teacher import ConstantClassModel, SampleSubset, class_counts
from slim.tasks import get_task
from tests.helpers.cli import run_tool
from tests.helpers.resume import assert_same_weights
from tests.helpers.cls_fixtures import NORMALIZE, make_tiny_cls, write_yaml

import yaml


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("check")
    paths = make_tiny_cls(str(root), per_class=10)  # 100 train / 100 val images
    teacher_dir = root / "teacher"
    # 60 iterations: a teacher far above chance on the val images (top-1 about 0.5 vs 0.1)
    assert run_tool("train", "--config", paths["teacher"], "--iters", 60, "--save_dir", teacher_dir, "--seed", 0,
                    "--log_iters", 60) == 0
    paths["weights"] = str(teacher_dir / "iter_60" / "model.pdparams")
    return paths


def check(paths, save_dir, *extra, student="student", teacher="teacher"):
    code = run_tool("distill_train", "-t", paths[teacher], "-c", paths[student], "--seed", 0, "--save_dir", save_dir,
                    "--check", *extra)
    report = json.loads((save_dir / "check.json").read_text()) if (save_dir / "check.json").is_file() else None
    return code, report


def flagged(report, section=None):
    return [f for f in report["findings"] if f["flagged"] and (section is None or f["section"] == section)]


def test_healthy_pair_reports_nothing_and_writes_the_report(tiny, tmp_path):
    code, report = check(tiny, tmp_path / "ok", "--teacher_pretrained", tiny["weights"])
    assert code == 0 and report["exit_code"] == 0 and flagged(report) == []
    scores = {s["pipeline"]: s["top1"] for s in report["teacher"]["scores"]}
    assert scores["student's"] > report["teacher"]["chance"] + 0.2
    assert report["teacher"]["chance"] == pytest.approx(0.1)  # 10 val images per class: any class is 1 in 10
    terms = {t["term"]: t for t in report["balance"]["terms"]}
    assert terms["CrossEntropyLoss"]["kind"] == "task" and terms["distill_KLLoss"]["kind"] == "distillation"
    assert 0.01 < terms["distill_KLLoss"]["ratio_to_task"] < 10
    pair, = report["pairs"]
    assert pair["student"] == "[16, 10]" and pair["teacher"] == "[16, 10]" and pair["student_trains"]
    assert set(report["cost"]["seconds"]) == {"student", "teacher", "distillation"}
    assert report["cost"]["teacher_cache_bytes"] == 4 * 16 * (10 * 2 + 1)  # 4 iterations x 16 samples, float16
    md = (tmp_path / "ok" / "check.md").read_text()
    assert "## Loss balance" in md and "nothing flagged" in md
    assert not list((tmp_path / "ok").glob("iter_*"))  # it did not train


def test_untrained_teacher_is_flagged_at_chance(tiny, tmp_path):
    code, report = check(tiny, tmp_path / "untrained", "--allow_untrained_teacher")
    assert code == 3
    finding, = flagged(report, "teacher")
    assert "no better than always predicting the most frequent class" in finding["message"]
    assert "teacher weights are the trained ones" in finding["fix"]


def test_student_baseline_better_than_the_teacher_is_flagged(tiny, tmp_path):
    # the teacher's own weights loaded as the "student alone": the teacher is then not better than it
    baseline = tmp_path / "baseline.yml"
    student = yaml.safe_load(open(tiny["student"]))
    student["model"] = yaml.safe_load(open(tiny["teacher"]))["model"]
    write_yaml(str(baseline), student)
    code, report = run_tool("distill_train", "-t", tiny["teacher"], "-c", baseline, "--teacher_pretrained",
                            tiny["weights"], "--check", "--save_dir", tmp_path / "b", "--student_baseline",
                            tiny["weights"]), json.loads((tmp_path / "b" / "check.json").read_text())
    assert code == 3
    assert report["teacher"]["student_baseline"] == report["teacher"]["scores"][0]["top1"]
    assert any("not better than the student alone" in f["message"] for f in flagged(report, "teacher"))


def test_teacher_config_with_another_normalisation_is_flagged(tiny, tmp_path):
    teacher = yaml.safe_load(open(tiny["teacher"]))
    other = {"type": "Normalize", "mean": [0.5], "std": [0.5]}
    for key in ("train_dataset", "val_dataset"):
        teacher[key]["transforms"] = [other if t == NORMALIZE else t for t in teacher[key]["transforms"]]
    tiny = dict(tiny, other_norm=write_yaml(str(tmp_path / "teacher_norm.yml"), teacher))
    code, report = check(tiny, tmp_path / "norm", "--teacher_pretrained", tiny["weights"], teacher="other_norm")
    assert code == 3
    messages = [f["message"] for f in flagged(report, "teacher")]
    assert any(m.startswith("normalisation (val pipeline)") and "[0.5]" in m and "0.1307" in m for m in messages)
    assert any(m.startswith("normalisation (train pipeline)") for m in messages)
    assert {s["pipeline"] for s in report["teacher"]["scores"]} == {"student's", "teacher config's"}


def test_term_100x_too_large_is_flagged_and_the_suggested_weight_balances_it(tiny, tmp_path):
    code, report = check(tiny, tmp_path / "big", "--teacher_pretrained", tiny["weights"], "-o",
                         "distill_loss.coef.0=50")  # 100 x the config's 0.5
    assert code == 3
    finding, = flagged(report, "balance")
    term = next(t for t in report["balance"]["terms"] if t["term"] == "distill_KLLoss")
    assert term["ratio_to_task"] > 10 and "swamps the task loss" in finding["message"]
    suggested = term["weight"] / term["ratio_to_task"]
    assert f"-o distill_loss.coef.0={suggested:.3g}" in finding["fix"]
    # the gradient is linear in the weight: at the suggested weight the ratio is 1
    code, report = check(tiny, tmp_path / "fixed", "--teacher_pretrained", tiny["weights"], "-o",
                         f"distill_loss.coef.0={suggested!r}")
    term = next(t for t in report["balance"]["terms"] if t["term"] == "distill_KLLoss")
    assert code == 0 and term["ratio_to_task"] == pytest.approx(1.0, rel=1e-3)


def test_pair_that_overflows_fp16_is_flagged_only_for_fp16(tiny, tmp_path):
    state = paddle.load(tiny["weights"])
    for key in ("head.weight", "head.bias"):  # the same classes, logits beyond fp16's 65504
        state[key] = state[key] * 1e5
    paddle.save(state, str(tmp_path / "loud.pdparams"))
    args = ["--teacher_pretrained", tmp_path / "loud.pdparams"]
    code, report = check(tiny, tmp_path / "fp16", *args, "--precision", "fp16")
    assert code == 3 and report["pairs"][0]["max_abs_teacher"] > 65504
    assert any("teacher tensor of distill_KLLoss" in f["message"] and "fp16" in f["message"]
               for f in flagged(report, "pairs"))
    _, report = check(tiny, tmp_path / "fp32", *args)
    assert not flagged(report, "pairs")


def test_detached_student_side_is_flagged(tiny, tmp_path):
    student = yaml.safe_load(open(tiny["student"]))
    image = {"layer": "backbone.features.0", "io": "input"}  # the image: no student parameter produces it
    student["distill"] = [{"name": "wrong_io", "student": image, "teacher": image, "loss": "L2Loss", "weight": 1.0}]
    tiny = dict(tiny, detached=write_yaml(str(tmp_path / "student_detached.yml"), student))
    code, report = check(tiny, tmp_path / "detached", "--teacher_pretrained", tiny["weights"], student="detached")
    assert code == 3
    row = next(r for r in report["pairs"] if r["name"] == "wrong_io")
    assert not row["student_trains"]
    pairs, = flagged(report, "pairs")
    assert "wrong_io" in pairs["message"] and "receives no gradient" in pairs["message"]
    assert any("wrong_io gives the student's parameters no gradient" in f["message"]
               for f in flagged(report, "balance"))


def test_check_then_train_trains_only_when_nothing_is_flagged(tiny, tmp_path):
    common = ["-t", tiny["teacher"], "-c", tiny["student"], "--seed", 0, "--check_then_train", "--iters", 2]
    trained = run_tool("distill_train", *common, "--teacher_pretrained", tiny["weights"], "--save_dir", tmp_path / "a")
    assert trained == 0
    assert (tmp_path / "a" / "iter_2" / "model.pdparams").is_file() and (tmp_path / "a" / "check.md").is_file()
    # the check changed nothing of the run: the same weights as training without it
    plain = [a for a in common if a != "--check_then_train"]
    assert run_tool("distill_train", *plain, "--teacher_pretrained", tiny["weights"], "--save_dir", tmp_path / "c") == 0
    assert_same_weights(tmp_path / "a" / "iter_2", tmp_path / "c" / "iter_2")
    assert run_tool("distill_train", *common, "--allow_untrained_teacher", "--save_dir", tmp_path / "b") == 3
    assert not list((tmp_path / "b").glob("iter_*"))


def test_bad_input_exits_2(tiny, tmp_path, capsys):
    args = ["-t", tiny["teacher"], "-c", tiny["student"], "--teacher_pretrained", tiny["weights"], "--save_dir",
            tmp_path / "x"]
    assert run_tool("distill_train", *args, "--student_baseline", tiny["weights"]) == 2
    assert "add --check" in capsys.readouterr().err
    assert run_tool("distill_train", *args, "--check", "--student_baseline", tmp_path / "missing.pdparams") == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        run_tool("distill_train", *args, "--check", "--check_samples", 0)
    assert e.value.code == 2


def test_chance_is_the_most_frequent_class_through_the_task_metric(tiny):
    """The constant predictor's top-1 equals the most frequent class's share, counted with NumPy."""
    task = get_task({"task": "cls"})
    cfg = yaml.safe_load(open(tiny["student"]))
    dataset = task.build_dataset(cfg, "val")
    subset = SampleSubset(dataset, 23)  # spread over a val set sorted by class: several classes, unevenly
    labels = np.array([subset[i]["label"] for i in range(len(subset))])
    assert len(set(labels.tolist())) > 5
    counts = class_counts(task, subset)
    np.testing.assert_array_equal(counts, np.bincount(labels))
    teacher = task.build_model(yaml.safe_load(open(tiny["teacher"])))
    teacher.eval()
    constant = ConstantClassModel(teacher, counts)
    metrics = task.evaluate(constant, subset, cfg, log=lambda line: None)
    assert constant.chosen == int(np.argmax(np.bincount(labels)))
    assert metrics["top1"] == pytest.approx(np.bincount(labels).max() / len(labels))
    assert not teacher.training  # the wrapper leaves the frozen model's mode alone


def test_paddleclas_distillation_model_is_checked(tmp_path):
    """A DistillationModel: its frozen Teacher is evaluated (an untrained one is flagged), DistillationGTCELoss is
    the task term and DKD the distillation term, whose weight is set at Loss.Train.1."""
    from slim.datasets import mnist
    from slim.tasks.ppcls.arch import backbone_factory
    data = str(tmp_path / "data")
    mnist.prepare(data, per_class=3)
    paddle.seed(0)
    weights = str(tmp_path / "teacher.pdparams")
    paddle.save(backbone_factory("ResNet18")(pretrained=False, class_num=10).state_dict(), weights)
    config = os.path.join(os.path.dirname(__file__), "..", "configs", "ppcls", "resnet34_distill_resnet18_dkd.yaml")
    code = run_tool("train", "-c", config, "-o", f"DataLoader.Train.dataset.image_root={data}",
                    f"DataLoader.Train.dataset.cls_label_path={data}/train_list.txt",
                    f"DataLoader.Eval.dataset.image_root={data}",
                    f"DataLoader.Eval.dataset.cls_label_path={data}/val_list.txt",
                    "DataLoader.Train.sampler.batch_size=8",
                    "Arch.models.0.Teacher.name=ResNet18", f"Arch.models.0.Teacher.pretrained={weights}",
                    "Arch.models.1.Student.name=MobileNetV3_small_x0_35", "--check", "--save_dir", tmp_path / "run",
                    "--seed", 0)
    report = json.loads((tmp_path / "run" / "check.json").read_text())
    assert code == 3
    assert any(f["message"].startswith("The Teacher scores top1") for f in flagged(report, "teacher"))
    kinds = {t["term"]: t["kind"] for t in report["balance"]["terms"]}
    assert kinds == {"CELoss_Student": "task", "loss_dkd_Student_Teacher": "distillation"}
    pair, = report["pairs"]
    assert pair["name"] == "loss_dkd_Student_Teacher" and pair["student_trains"]
    assert pair["student"] == "Student [8, 10]" and pair["teacher"] == "Teacher [8, 10]"


def test_detection_slim_config_is_checked(tmp_path):
    """ppdet's --slim_config: the teacher is evaluated with its full eval forward (mAP; an untrained one finds
    nothing), the YOLOv3 loss terms are the task loss, and a term too heavy names the slim config's section."""
    from slim.apps import launch
    from tests.helpers.det_fixtures import make_tiny_det, model_config
    from tests.helpers.det_slim_fixtures import save_random_weights, slim_yaml
    root = str(tmp_path)
    yolo = make_tiny_det(root)
    student = write_yaml(os.path.join(root, "student.yml"), dict(model_config([16, 8, 8], scale=0.25),
                                                                _BASE_=["_base_/tiny_trees.yml"]))
    task, cfg = launch.load_task_config(yolo["teacher"])
    weights = save_random_weights(task, cfg, os.path.join(root, "teacher.pdparams"))
    slim = slim_yaml(root, "slim.yml", yolo["teacher"], weights, distill_loss="DistillYOLOv3Loss",
                     DistillYOLOv3Loss={"weight": 1.0e6})
    code = run_tool("train", "-c", student, "--slim_config", slim, "--check", "--save_dir", tmp_path / "run",
                    "--seed", 0)
    report = json.loads((tmp_path / "run" / "check.json").read_text())
    assert code == 3
    assert report["teacher"]["chance"] is None and report["teacher"]["scores"][0]["mAP"] < 0.1
    assert any("a model that predicts nothing" in f["message"] for f in flagged(report, "teacher"))
    kinds = {t["term"]: t["kind"] for t in report["balance"]["terms"]}
    assert kinds["loss_xy"] == "task" and kinds["distill_yolov3_0"] == "distillation"
    heavy = [f for f in flagged(report, "balance") if f["message"].startswith("distill_yolov3_")]
    assert heavy and all(f"DistillYOLOv3Loss.weight in {slim}" in f["fix"] for f in heavy)
    assert [r["name"] for r in report["pairs"]] == ["distill_yolov3_0", "distill_yolov3_1", "distill_yolov3_2"]
