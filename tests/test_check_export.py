"""Export parity (slim/apps/export_parity.py): tools/export.py runs the export through Paddle Inference on val
samples and compares it with the dygraph model, output by output; an export whose weights were replaced is an
error naming the output; the log names what was exported (a DistillationModel's infer_model_name model alone) and
its parameter count."""
import os
import shutil

import numpy as np
import paddle
import pytest
import yaml

from slim.apps import launch
from slim.apps.export import export_model
from slim.apps.export_parity import check_parity, compare, describe_exported, dygraph_outputs
from slim.distill.errors import SlimError
from tests.helpers.cli import run_tool
from tests.helpers.cls_fixtures import make_tiny_cls


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_parity")
    paths = make_tiny_cls(str(root), per_class=2)
    task, cfg = launch.load_task_config(paths["teacher"])
    paths["task"], paths["cfg"] = task, cfg
    return paths


def build(tiny, seed):
    paddle.seed(seed)
    model = tiny["task"].build_model(tiny["cfg"])
    model.eval()
    return model


def test_compare_against_numpy():
    expected = np.array([[0.1, 2.0, -1.0], [3.0, 0.5, 0.2]], dtype="float32")
    got = expected + np.array([[0.0, 0.002, 0.0], [0.0, 0.0, 3.1]], dtype="float32")
    diff, rel, agree = compare(expected, got, classes=3)
    assert diff == pytest.approx(3.1, rel=1e-6) and rel == pytest.approx(3.1 / 3.0, rel=1e-6)
    assert agree == 0.5  # row 2 now picks class 2
    assert compare(expected, got[:1], classes=3) is None  # another shape: not compared
    assert compare(expected, got, classes=5)[2] is None  # not class scores


def test_export_command_checks_val_samples_and_names_what_it_exported(tiny, tmp_path, capsys):
    weights = str(tmp_path / "teacher.pdparams")
    model = build(tiny, 1)
    paddle.save(model.state_dict(), weights)
    assert run_tool("export", "-c", tiny["teacher"], "--model_path", weights, "--save_dir", tmp_path / "out",
                    "--check_shape", "1,1,28,28") == 0
    out = capsys.readouterr().out
    total = sum(int(p.size) for p in model.parameters())
    assert f"(+ .pdiparams): Classifier, {total:,} parameters" in out
    logits, = [line for line in out.splitlines() if line.startswith("export parity, output 0")]
    assert "on 4 val sample(s)" in logits and "argmax agreement 100.00%" in logits
    assert any(line.startswith("export parity, output 1") for line in out.splitlines())  # the embedding


def test_an_export_with_other_weights_is_an_error_naming_the_output(tiny, tmp_path):
    task, cfg = tiny["task"], tiny["cfg"]
    shape = (1, 1, 28, 28)
    export_model(task, cfg, build(tiny, 1), str(tmp_path / "a"), check_shape=shape, log=lambda line: None)
    export_model(task, cfg, build(tiny, 2), str(tmp_path / "b"), check_shape=shape, log=lambda line: None)
    model = build(tiny, 1)
    samples = dygraph_outputs(task.export_model(model, cfg), task, cfg, task.export_input_spec(cfg))
    assert len(samples) == 4
    assert check_parity(str(tmp_path / "a"), "fp32", samples, task, cfg, log=lambda line: None)[0]["max_rel_diff"] < 1e-5
    shutil.copy(tmp_path / "b" / "model.pdiparams", tmp_path / "a" / "model.pdiparams")  # the damage
    with pytest.raises(SlimError, match=r"output 0 \(fetch_name_0\) differs from the dygraph model's on val samples"):
        check_parity(str(tmp_path / "a"), "fp32", samples, task, cfg, log=lambda line: None)


def test_without_val_data_the_parity_is_skipped_with_a_reason(tiny, tmp_path):
    task = tiny["task"]
    cfg = dict(tiny["cfg"], val_dataset=dict(tiny["cfg"]["val_dataset"], dataset_root=str(tmp_path / "nowhere")))
    samples = dygraph_outputs(task.export_model(build(tiny, 1), cfg), task, cfg, task.export_input_spec(cfg))
    lines = []
    assert check_parity(str(tmp_path), "fp32", samples, task, cfg, log=lines.append) == []
    assert lines[0].startswith("export parity on val samples: skipped (no val samples")


def test_a_distillation_model_exports_its_infer_model_alone(tmp_path):
    from slim.tasks.ppcls import config as pc
    from slim.tasks.ppcls.arch import backbone_factory
    from slim.tasks.ppcls.task import Task
    paddle.seed(0)
    weights = str(tmp_path / "teacher.pdparams")
    paddle.save(backbone_factory("ResNet18")(pretrained=False, class_num=10).state_dict(), weights)
    config = os.path.join(os.path.dirname(__file__), "..", "configs", "ppcls", "resnet34_distill_resnet18_dkd.yaml")
    cfg = pc.load(config, ["Arch.models.0.Teacher.name=ResNet18", f"Arch.models.0.Teacher.pretrained={weights}",
                           "Arch.models.1.Student.name=MobileNetV3_small_x0_35"], log=lambda line: None)
    task = Task()
    with task.logging_to(lambda line: None):
        model = task.build_model(cfg)
    layer = task.export_model(model, cfg)
    student = sum(int(p.size) for p in model.sub("Student").parameters())
    assert layer is model.sub("Student")
    assert describe_exported(model, layer) == (f"Student (MobileNetV3) of the DistillationModel; the other models are "
                                               f"not exported, {student:,} parameters")
