"""The memory of one training step (`--analyse`): measured, plausible, and without effect on training."""
import re

import numpy as np
import paddle
import pytest

from slim.engine import analysis
from slim.engine.analysis import MemoryMeter, measure_step
from tests.helpers.cli import run_tool
from tests.helpers.seg_fixtures import make_tiny_seg

NUMBER = r"(\d+\.\d)"
LINE = re.compile(r"step memory, batch (\d+) per process, MiB allocated above the weights and gradients \((.+?); "
                  r"activations: .*?\): (.*)$", re.M)


def small_net():
    return paddle.nn.Sequential(paddle.nn.Conv2D(3, 16, 3, padding=1), paddle.nn.BatchNorm2D(16), paddle.nn.ReLU(),
                                paddle.nn.Conv2D(16, 16, 3, padding=1), paddle.nn.ReLU(), paddle.nn.Conv2D(16, 2, 1))


def test_cpu_measure_is_paddles_allocator_and_a_no_grad_forward_keeps_nothing():
    meter = MemoryMeter()
    assert meter.kind == "host", "Paddle 3.3.1 has host_memory_stat_*: the CPU measure should be Paddle's own"
    net, x = small_net(), paddle.randn([4, 3, 32, 32])
    net.train()
    train = measure_step(lambda: net(x).mean(), lambda loss: loss.backward(), meter)
    net.eval()

    def no_grad_forward():
        with paddle.no_grad():
            return net(x).mean()

    infer = measure_step(no_grad_forward, meter=meter)
    one_map = 4 * 16 * 32 * 32 * 4  # bytes of one 16-channel activation of the batch
    assert train["kept"] >= 3 * one_map  # conv, BN and ReLU outputs at least, kept for the backward
    assert train["peak"] >= train["kept"] > 0
    assert infer["kept"] < one_map  # under no_grad only the scalar output stays
    assert 0 < infer["peak"] < train["peak"]


def test_without_allocator_statistics_the_peak_rss_growth_is_used(monkeypatch):
    monkeypatch.setattr(analysis, "_host_stats", lambda: None)
    meter = MemoryMeter()
    assert meter.kind == "rss" and "RSS" in meter.name
    used = measure_step(lambda: paddle.ones([256, 1024, 64]).sum(), meter=meter)  # 64 MiB
    assert used["kept"] is None and used["peak"] >= 0  # a lower bound: 0 if the process was larger before


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    return make_tiny_seg(str(tmp_path_factory.mktemp("analysis_seg")))


def memory_line(path):
    with open(path) as f:
        match = LINE.search(f.read())
    assert match, "no step-memory line in the log"
    batch, measure, steps = match.groups()
    found = {}
    for part in steps.split("; "):
        name, _, values = part.partition(": ")
        found[name.strip()] = {k: float(v) for k, v in re.findall(r"(activations|peak) " + NUMBER, values)}
    return int(batch), measure, found


def test_distill_analyse_logs_plausible_step_memory_and_trains_the_same_weights(seg, tmp_path):
    common = ["-c", seg["feat"], "-t", seg["teacher"], "--allow_untrained_teacher", "--iters", 2, "--save_interval",
              2, "--log_iters", 1, "--seed", 0, "--device", "cpu"]
    assert run_tool("distill_train", *common, "--save_dir", tmp_path / "plain") == 0
    assert run_tool("distill_train", *common, "--save_dir", tmp_path / "analysed", "--analyse") == 0

    batch, measure, steps = memory_line(tmp_path / "analysed" / "record.txt")
    assert batch == 2 and "host_memory_stat" in measure
    student, teacher, distill = (steps["student training step"], steps["teacher forward (no grad)"],
                                 steps["distillation step"])
    assert student["activations"] > 0 and distill["activations"] > 0
    assert student["peak"] >= student["activations"] and distill["peak"] >= distill["activations"]
    # the teacher is the student's architecture here: its no-grad forward needs less than a training step
    assert 0 < teacher["peak"] < student["peak"]
    # the distillation step keeps the student's activations and more (teacher features, connector, losses)
    assert distill["activations"] >= student["activations"]
    with open(tmp_path / "plain" / "record.txt") as f:
        assert "step memory" not in f.read()  # only when asked

    # measuring changed nothing: same weights, connectors and optimizer state as the run without it
    for name in ("model.pdparams", "connectors.pdparams", "model.pdopt"):
        a = paddle.load(str(tmp_path / "plain" / "iter_2" / name))
        b = paddle.load(str(tmp_path / "analysed" / "iter_2" / name))
        for key, value in a.items():
            if hasattr(value, "shape"):
                assert np.array_equal(np.asarray(value), np.asarray(b[key])), f"{name}: {key}"


def test_train_analyse_logs_the_student_step_only(seg, tmp_path):
    assert run_tool("train", "-c", seg["teacher"], "--iters", 1, "--log_iters", 1, "--seed", 0, "--device", "cpu",
                    "--save_dir", tmp_path / "run", "--analyse") == 0
    _, _, steps = memory_line(tmp_path / "run" / "record.txt")
    assert list(steps) == ["student training step"]
    assert steps["student training step"]["activations"] > 0
