"""`tools/list_layers.py -c S -t T --suggest`: a ready `distill:` block on stdout that trains as written."""
import os

import paddle
import pytest
import yaml

from slim.apps.suggest import render_pairs, suggest_pairs
from slim.distill import Distiller, LayerRef, freeze_teacher, parse_pairs
from slim.apps.launch import load_task_config
from tests.helpers.cli import ROOT, run_process, run_tool
from tests.helpers.det_fixtures import make_tiny_det
from tests.helpers.seg_fixtures import make_tiny_seg, write_yaml


def suggest(student, teacher, *extra):
    """The command as a user runs it (`> pairs.yml`): (stdout, stderr)."""
    proc = run_process("list_layers", "-c", student, "-t", teacher, "--suggest", *extra,
                       env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, proc.stderr


def check_block(stdout, student, teacher):
    """stdout is nothing but a `distill:` block whose pairs name sublayers of both models."""
    block = yaml.safe_load(stdout)
    assert list(block) == ["distill"]
    pairs = block["distill"]
    assert pairs and len(parse_pairs(pairs)) == len(pairs)
    for pair in pairs:
        assert set(pair) <= {"name", "student", "teacher", "loss", "weight", "align"}
    for side, config in (("student", student), ("teacher", teacher)):
        task, cfg = load_task_config(config)
        names = {name for name, _ in task.build_model(cfg).named_sublayers()}
        for pair in pairs:
            ref = pair[side]
            if isinstance(ref, str) and ref != "$output":
                assert ref in names, (side, ref)
    assert len({p["name"] for p in pairs}) == len(pairs)
    assert len({p["student"] if isinstance(p["student"], str) else str(p["student"]) for p in pairs}) == len(pairs)
    return pairs


def distil(tmp, student_base, pairs_text, teacher, base_key="_base_"):
    """Train 2 iterations of a student config that inherits the fixture's and the suggested block."""
    with open(os.path.join(tmp, "pairs.yml"), "w") as f:
        f.write(pairs_text)
    config = write_yaml(os.path.join(tmp, "distilled.yml"), {base_key: [os.path.relpath(student_base, tmp),
                                                                        "pairs.yml"]})
    out = os.path.join(tmp, "run")
    assert run_tool("distill_train", "-c", config, "-t", teacher, "--allow_untrained_teacher", "--iters", 2,
                    "--log_iters", 1, "--save_interval", 2, "--seed", 0, "--save_dir", out) == 0
    with open(os.path.join(out, "record.txt")) as f:
        return f.read()


def test_seg_pairs_resnet18_student_resnet50_teacher_train(tmp_path):
    make_tiny_seg(str(tmp_path))
    # the fixture's teacher config (no distill_loss) as the student; a ResNet50_vd teacher (wider stages)
    student = write_yaml(str(tmp_path / "student18.yml"), {"_base_": "teacher.yml"})
    teacher = write_yaml(str(tmp_path / "teacher50.yml"),
                         {"_base_": "teacher.yml", "model": {"backbone": {"type": "ResNet50_vd"}}})
    stdout, stderr = suggest(student, teacher)
    assert stdout.lstrip().startswith("#") and "distill:" in stdout
    pairs = check_block(stdout, student, teacher)
    by_name = {p["name"]: p for p in pairs}
    logits = by_name["kl_logits"]
    assert logits["loss"] == "KLLoss" and logits["weight"] == 1.0
    assert logits["student"] == logits["teacher"] == {"layer": "$output", "idx": 0}
    features = [p for p in pairs if p is not logits]
    assert features and all(p["loss"]["type"] == "SegChannelwiseLoss" and p["weight"] < 1.0 for p in features)
    stage8 = by_name["cwd_backbone_s8"]  # BasicBlock 128 channels vs BottleneckBlock 512: a connector
    assert (stage8["student"], stage8["teacher"]) == ("backbone.bb_1_1", "backbone.bb_1_3")
    assert stage8["align"] == {"type": "1x1conv"}
    for pair in features:  # whole blocks, never their inner steps, norms or activations
        assert not pair["teacher"].endswith(("conv0", "_batch_norm", "_act_op", "act_func", "relu"))
    assert "stride" in stderr and "1x1conv connector" in stderr and "kl_logits" in stderr

    log = distil(str(tmp_path), student, stdout, teacher)
    for pair in pairs:
        assert f"'{pair['name']}'" in log and f"{pair['name']}: " in log, pair["name"]


def test_det_pairs_are_the_head_maps_and_replace_the_students_list(tmp_path):
    paths = make_tiny_det(str(tmp_path))
    stdout, stderr = suggest(paths["student"], paths["teacher"], "--input_shape", "1,3,64,64")
    pairs = check_block(stdout, paths["student"], paths["teacher"])
    names = [p["student"] for p in pairs]
    assert {"yolo_head.yolo_output.0", "yolo_head.yolo_output.1", "yolo_head.yolo_output.2"} <= set(names)
    assert not any(p["student"] == "$output" or isinstance(p["student"], dict) for p in pairs)  # no logits pair
    assert all(p["loss"] == "L2Loss" and p["weight"] < 1.0 for p in pairs)
    assert "logits: no pair" in stderr and "head output maps" in stderr

    # ppdet's `_BASE_`: the suggested list replaces the fixture student's own distill: list
    log = distil(str(tmp_path), paths["student"], stdout, paths["teacher"], base_key="_BASE_")
    for pair in pairs:
        assert f"'{pair['name']}'" in log and f"{pair['name']}: " in log, pair["name"]
    assert "obj_out1" not in log and "soft_cls0" not in log


def test_cls_pairs_logits_unless_distill_loss_covers_them():
    s_task, s_cfg = load_task_config(os.path.join(ROOT, "configs/cls/convnet_student_mnist.yml"))
    t_task, t_cfg = load_task_config(os.path.join(ROOT, "configs/cls/convnet_teacher_mnist.yml"))
    notes = []
    pairs = suggest_pairs(s_task, s_cfg, t_task, t_cfg, log=notes.append)
    assert not any(p["name"] == "kl_logits" for p in pairs)  # the student's distill_loss already has KL
    assert any("distill_loss" in n for n in notes)
    (feature,) = pairs
    assert feature["align"] == {"type": "1x1conv"} and feature["loss"] == "L2Loss"  # 8 vs 64 channels
    assert "only the teacher" in "\n".join(notes)

    s_cfg = {k: v for k, v in s_cfg.items() if k != "distill_loss"}
    pairs = suggest_pairs(s_task, s_cfg, t_task, t_cfg, log=notes.append)
    assert pairs[0] == {"name": "kl_logits", "student": "$output", "teacher": "$output", "loss": "KLLoss",
                        "weight": 1.0}
    block = yaml.safe_load(render_pairs(pairs, ["a header"]))
    assert block["distill"] == [dict(p) for p in pairs]


@pytest.mark.parametrize("args, message", [
    (["--suggest"], "needs the teacher's config"),
    (["-t", "T.yml"], "is used with --suggest"),
    (["-t", "T.yml", "--suggest", "--max_depth", "2"], "does not apply to --suggest"),
    (["-t", "T.yml", "--suggest", "--input_shape", "1,3,64"], "N,C,H,W"),
    (["--input_shape", "1,x"], "comma-separated integers"),
])
def test_flag_errors_are_one_line(args, message, capsys):
    assert run_tool("list_layers", "-c", "S.yml", *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_teacher_of_another_task_is_refused(capsys):
    code = run_tool("list_layers", "-c", os.path.join(ROOT, "configs/cls/convnet_student_mnist.yml"),
                    "-t", os.path.join(ROOT, "configs/seg/deeplabv3p_resnet18_vd_nuclei_student.yml"), "--suggest")
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert "error: " in captured.err and "same task" in captured.err


class _Toy(paddle.nn.Layer):
    """A stride-4 stage (its size set by the padding), then pooled logits."""

    def __init__(self, channels, padding):
        super().__init__()
        self.stage = paddle.nn.Conv2D(3, channels, 3, stride=4, padding=padding)
        self.act = paddle.nn.ReLU()
        self.fc = paddle.nn.Linear(channels, 5)

    def forward(self, x):
        return self.fc(self.act(self.stage(x)).mean(axis=[2, 3]))


class _ToyTask:
    name = "toy"

    def build_model(self, cfg):
        return _Toy(cfg["channels"], cfg["padding"])

    def example_inputs(self, cfg, input_shape=None):
        return (paddle.randn(input_shape or [1, 3, 30, 30]),)

    def logits_ref(self, cfg):
        return LayerRef("$output")

    def prepare_teacher_config(self, cfg, teacher_cfg):
        return teacher_cfg


def test_connector_and_resize_when_channels_and_sizes_differ_at_one_stride():
    task = _ToyTask()
    notes = []
    pairs = suggest_pairs(task, {"channels": 4, "padding": 0}, task, {"channels": 6, "padding": 1},
                          log=notes.append)  # 7x7 and 8x8 maps, both at stride 4
    logits, stage = pairs
    assert logits == {"name": "kl_logits", "student": "$output", "teacher": "$output", "loss": "KLLoss",
                      "weight": 1.0}
    assert stage["student"] == stage["teacher"] == "stage"
    assert stage["align"] == {"type": "1x1conv", "resize": "student"} and stage["loss"] == "L2Loss"
    assert "H, W differ" in stage.why
    student, teacher = task.build_model({"channels": 4, "padding": 0}), task.build_model({"channels": 6, "padding": 1})
    distiller = Distiller(student, freeze_teacher(teacher), parse_pairs(pairs))
    x = paddle.randn([2, 3, 30, 30])
    distiller.build(x)
    out = distiller(x)
    assert set(out.losses) == {"kl_logits", "l2_stage_s4"} and bool(paddle.isfinite(out.loss))
