"""Loss-weight schedules (slim/distill/weight_schedule.py): each type's factor against an independent NumPy formula;
bad schedules are one clear error; a term scheduled off is 0 and, once every term is, the teacher is not run;
training logs the weights (record.txt, history.jsonl for VisualDL), stops distilling where the schedule says and
resumes on the schedule; PaddleClas loss entries and ppdet slim-config sections take the same key."""
import json

import numpy as np
import paddle
import pytest
import yaml

from slim.distill.distiller import Distiller
from slim.distill.errors import ConfigError
from slim.distill.pairs import logit_pairs, parse_pairs
from slim.distill.weight_schedule import WeightSchedule
from tests.helpers.cli import run_tool
from tests.helpers.cls_fixtures import make_tiny_cls, write_yaml
from tests.helpers.resume import assert_same_weights, run_interrupted

POSITIONS = np.arange(0, 60)


def factors(cfg, total=50, by_epoch=False):
    s = WeightSchedule(cfg)
    return np.array([s.factor(0 if by_epoch else p, p if by_epoch else 0, total, total) for p in POSITIONS])


def test_each_type_against_numpy():
    p = POSITIONS.astype(float)
    np.testing.assert_allclose(factors({"type": "linear", "from": 0.2, "to": 1.0, "begin": 10, "end": 40}),
                               np.interp(p, [10, 40], [0.2, 1.0]))
    t = np.clip(p / 50.0, 0, 1)  # `end` defaults to the run's end
    np.testing.assert_allclose(factors({"type": "cosine", "from": 1.0, "to": 0.1}),
                               0.1 + 0.9 * (1 + np.cos(np.pi * t)) / 2)
    np.testing.assert_allclose(factors({"type": "step", "milestones": [5, 20], "gamma": 0.5}),
                               0.5 ** ((p >= 5).astype(int) + (p >= 20).astype(int)))
    np.testing.assert_allclose(factors({"type": "step", "milestones": [5, 20], "values": [0, 2, 1]}),
                               np.select([p < 5, p < 20], [0, 2], 1))
    np.testing.assert_allclose(factors({"type": "constant", "warmup": 8}), np.minimum(p / 8, 1))
    # MMRazor's StopDistillHook: off from epoch 7 on, by epoch
    np.testing.assert_allclose(factors({"type": "constant", "stop": 7, "by": "epoch"}, by_epoch=True),
                               (p < 7).astype(float))
    np.testing.assert_allclose(factors({"type": "linear", "from": 1, "to": 0, "end": 30, "warmup": 4, "stop": 25}),
                               np.where(p >= 25, 0, np.interp(p, [0, 30], [1, 0]) * np.minimum(p / 4, 1)))


@pytest.mark.parametrize("cfg, text", [
    ({"type": "linaer"}, "did you mean 'linear'"),
    ({"type": "linear", "edn": 5}, "did you mean 'end'"),
    ({"type": "linear", "begin": 10, "end": 5}, "must be after `begin`"),
    ({"type": "step", "milestones": [10, 5]}, "must increase"),
    ({"type": "step", "milestones": [10], "values": [1]}, "one factor more"),
    ({"type": "constant", "by": "batch"}, "iter or epoch"),
    ({"type": "constant", "stop": -1}, ">= 0"),
])
def test_bad_schedules_are_one_clear_error(cfg, text):
    with pytest.raises(ConfigError, match=text):
        WeightSchedule(cfg, "distill_loss")


class Counting(paddle.nn.Layer):
    def __init__(self, out=4):
        super().__init__()
        self.fc = paddle.nn.Linear(3, out)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.fc(x)


def test_terms_scheduled_off_are_zero_and_the_teacher_stops_when_all_are():
    paddle.seed(0)
    student, teacher = Counting(), Counting()
    pairs = logit_pairs({"types": [{"type": "L2Loss", "weight_schedule": {"type": "constant", "stop": 2}},
                                   {"type": "L1Loss"}], "coef": [2.0, 0.5],
                         "weight_schedule": {"type": "step", "milestones": [3], "values": [1, 0]}}, "$output")
    distiller = Distiller(student, teacher, pairs)
    x = paddle.randn([5, 3])
    s, t = student(x).numpy(), teacher(x).numpy()
    l2, l1 = ((s - t) ** 2).mean(), np.abs(s - t).mean()
    for step, (w2, w1) in enumerate([(2.0, 0.5), (2.0, 0.5), (0.0, 0.5), (0.0, 0.0)]):
        distiller.set_step(step)
        assert list(distiller.current_weights().values()) == [w2, w1]
        before = teacher.calls
        out = distiller(x)
        np.testing.assert_allclose([float(v) for v in out.losses.values()], [w2 * l2, w1 * l1], rtol=1e-5)
        assert teacher.calls - before == (0 if step == 3 else 1)  # all weights 0: no teacher forward
        assert distiller.teacher_needed == (step != 3)
    distiller.set_step(None)  # the configured weights again
    assert list(distiller.current_weights().values()) == [2.0, 0.5]


def test_pair_keys_and_origins():
    pairs = parse_pairs([{"student": "a", "teacher": "a", "loss": "L2Loss", "weight": 0.3,
                          "weight_schedule": {"type": "cosine", "end": 10}}])
    assert pairs[0].schedule.type == "cosine" and pairs[0].origin == "distill.0.weight"
    assert logit_pairs({"types": [{"type": "KLLoss"}], "coef": [3]}, "$output")[0].origin == "distill_loss.coef.0"
    with pytest.raises(ConfigError, match="did you mean 'weight_schedule'"):
        logit_pairs({"types": [{"type": "KLLoss"}], "coef": [3], "weight_schedul": {}}, "$output")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("schedule")
    paths = make_tiny_cls(str(root), per_class=4)
    student = yaml.safe_load(open(paths["student"]))
    student["distill_loss"]["types"][0]["weight_schedule"] = {"type": "linear", "from": 1.0, "to": 0.0, "end": 4}
    paths["linear"] = write_yaml(str(root / "student_linear.yml"), student)
    student["distill_loss"]["types"][0]["weight_schedule"] = {"type": "constant", "stop": 2}
    paths["stop"] = write_yaml(str(root / "student_stop.yml"), student)
    return paths


def history(save_dir):
    rows = [json.loads(line) for line in open(save_dir / "history.jsonl")]
    return [r for r in rows if "Train/loss" in r], [r for r in rows if "Train/weight/distill_KLLoss" in r]


def test_stop_distillation_logs_the_weights_and_stops_the_teacher(tiny, tmp_path, monkeypatch):
    calls = []
    original = Distiller.teacher_features

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Distiller, "teacher_features", counting)
    save = tmp_path / "stop"
    assert run_tool("distill_train", "-t", tiny["teacher"], "-c", tiny["stop"], "--allow_untrained_teacher",
                    "--iters", 4, "--log_iters", 1, "--seed", 0, "--save_dir", save, "--use_vdl") == 0
    losses, weights = history(save)
    assert [w["Train/weight/distill_KLLoss"] for w in weights] == [0.5, 0.5, 0.0, 0.0]
    assert [r["Train/distill_KLLoss"] > 0 for r in losses] == [True, True, False, False]
    assert len(calls) == 2  # the teacher ran for the two steps before the stop only
    log = (save / "record.txt").read_text()
    assert "weight_schedule of distill_KLLoss: constant (stop: 2)" in log
    assert "iter: 3/4" in log and "weights: distill_KLLoss 0)" in log
    assert list((save / "vdl").iterdir())  # the weights go to VisualDL with the losses


def test_resume_continues_the_schedule(tiny, tmp_path):
    args = ["-t", tiny["teacher"], "-c", tiny["linear"], "--allow_untrained_teacher", "--iters", 4, "--log_iters", 1,
            "--seed", 0, "--save_interval", 2]
    assert run_tool("distill_train", *args, "--save_dir", tmp_path / "whole") == 0
    assert run_interrupted(2, "distill_train", *args, "--save_dir", tmp_path / "cut") != 0
    assert run_tool("distill_train", *args, "--save_dir", tmp_path / "cut", "--resume_model", "auto") == 0
    whole, cut = history(tmp_path / "whole"), history(tmp_path / "cut")
    expected = [0.5 * f for f in (1.0, 0.75, 0.5, 0.25)]
    assert [w["Train/weight/distill_KLLoss"] for w in whole[1]] == expected
    assert [w["Train/weight/distill_KLLoss"] for w in cut[1]][-2:] == expected[2:]  # after the resume
    np.testing.assert_allclose([r["Train/distill_KLLoss"] for r in cut[0]][-2:],
                               [r["Train/distill_KLLoss"] for r in whole[0]][-2:], rtol=1e-5)
    assert_same_weights(tmp_path / "whole" / "iter_4", tmp_path / "cut" / "iter_4")


def test_paddleclas_loss_entries_take_a_schedule():
    from slim.tasks.ppcls.losses import CombinedLoss, build_loss_entry
    kl = build_loss_entry({"DistillationKLDivLoss": {"weight": 2.0, "model_name_pairs": [["Student", "Teacher"]],
                                                     "weight_schedule": {"type": "constant", "stop": 1}}},
                          "Loss.Train.1")
    ce = build_loss_entry({"DistillationGTCELoss": {"weight": 1.0, "model_names": ["Student"]}}, "Loss.Train.0")
    combined = CombinedLoss([ce, kl])
    paddle.seed(0)
    out = {"Student": paddle.randn([4, 5]), "Teacher": paddle.randn([4, 5])}
    batch = {"label": paddle.to_tensor([0, 1, 2, 3])}
    full = combined(out, batch)["loss_kldiv_Student_Teacher"]
    combined.set_step(1)
    assert combined.current_weights(scheduled_only=True) == {"DistillationKLDivLoss": 0.0}
    terms = combined(out, batch)
    assert float(terms["loss_kldiv_Student_Teacher"]) == 0.0 and float(full) > 0
    assert ce.ground_truth and not kl.ground_truth and kl.origin == "Loss.Train.1.DistillationKLDivLoss.weight"
    assert combined.entry_of["CELoss_Student"] is ce


def test_ppdet_slim_config_section_takes_a_schedule(tmp_path):
    from slim.tasks.det import slim_config
    slim = tmp_path / "slim.yml"
    slim.write_text(yaml.safe_dump({"architecture": "YOLOv3", "slim": "Distill", "distill_loss": "DistillYOLOv3Loss",
                                    "DistillYOLOv3Loss": {"weight": 1000, "weight_schedule": {"type": "constant",
                                                                                              "stop": 5}}}))
    loaded = slim_config.load(str(slim), {"architecture": "YOLOv3"})
    pairs = parse_pairs(loaded.pairs)
    assert len(pairs) == 3 and all(p.schedule.stop == 5 and p.weight == 1000 for p in pairs)
    assert loaded.origins["distill_yolov3_0"] == f"DistillYOLOv3Loss.weight in {slim}"
