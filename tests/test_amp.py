"""Mixed precision and the loss values read at log steps (CPU: autocast falls back to fp32, so the loss
scaler is also tested directly, with one enabled by hand)."""
import argparse
import json
import os
import pickle
from collections import defaultdict

import numpy as np
import paddle
import pytest

from slim.apps import launch
from slim.distill import NonFiniteLossError, build_loss
from slim.distill.precision import float32
from slim.engine import amp
from slim.engine.trainer import Trainer
from tests.helpers.cli import ROOT, run_tool
from tests.helpers.seg_fixtures import make_tiny_seg

# history.jsonl of the 5-iteration run below, recorded with the trainer before the loss values stayed on the
# device (each step then read every term with float()); the logged values must not change.
RECORDED = {
    2: {"Train/loss": 2.7467052936553955, "Train/CrossEntropyLoss": 0.7849395871162415,
        "Train/distill_KLLoss": 0.36752617359161377, "Train/cwd_stage2": 1.5942394733428955},
    4: {"Train/loss": 2.6994954347610474, "Train/CrossEntropyLoss": 0.7847284078598022,
        "Train/distill_KLLoss": 0.2881574034690857, "Train/cwd_stage2": 1.6266095638275146},
    5: {"Train/loss": 3.007694959640503, "Train/CrossEntropyLoss": 0.846051812171936,
        "Train/distill_KLLoss": 0.32024797797203064, "Train/cwd_stage2": 1.8413951396942139},
}


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    return make_tiny_seg(str(tmp_path_factory.mktemp("amp_seg")))


def distill(seg, save_dir, *extra):
    return run_tool("distill_train", "--teacher_config", seg["teacher"], "--student_config", seg["feat"],
                    "--allow_untrained_teacher", "--iters", 5, "--log_iters", 2, "--seed", 0,
                    "--save_interval", 100, "--save_dir", save_dir, *extra)


def enabled_scaler(init=1024.0):
    """A GradScaler enabled on the CPU (Paddle only enables one on GPU/XPU/custom devices): the attributes its
    enabled constructor sets, with float16 as the autocast dtype its scale() checks."""
    from paddle.amp.auto_cast import amp_global_state
    from paddle.amp.grad_scaler import _refresh_optimizer_state
    amp_global_state().amp_dtype = "float16"
    s = paddle.amp.GradScaler(enable=False)
    s._enable, s._use_dynamic_loss_scaling, s._init_loss_scaling = True, True, init
    s._incr_ratio, s._decr_ratio, s._incr_every_n_steps, s._decr_every_n_nan_or_inf = 2.0, 0.5, 1000, 1
    s._incr_count = s._decr_count = 0
    for name in ("_found_inf", "_temp_found_inf_value_false", "_temp_found_inf_fp16", "_temp_found_inf_bf16",
                 "_temp_found_inf_fp32"):
        setattr(s, name, paddle.to_tensor(np.array([0]).astype(np.bool_)))
    s._scale = paddle.to_tensor(np.array([init], dtype="float32"))
    s._cache_found_inf = None
    s._optimizer_states = defaultdict(_refresh_optimizer_state)
    return s


# ----- flags -----------------------------------------------------------------------------------------
def parse(*argv):
    p = argparse.ArgumentParser()
    launch.add_common_flags(p)
    return p.parse_args(list(argv))


@pytest.mark.parametrize("argv, expected", [
    ((), ("fp32", "O1")),
    (("--precision", "fp16"), ("fp16", "O1")),
    (("--precision", "BF16", "--amp_level", "o2"), ("bf16", "O2")),
    (("--amp",), ("fp16", "O1")),
    (("--amp", "--amp_level", "O2"), ("fp16", "O2")),
])
def test_precision_flags_reach_the_train_options(argv, expected):
    options = launch.options_from_args(parse(*argv), "out")
    assert (options.precision, options.amp_level) == expected


def test_conflicting_and_unknown_precisions_are_refused(capsys):
    with pytest.raises(SystemExit):
        parse("--precision", "fp8")
    assert "fp8" in capsys.readouterr().err
    with pytest.raises(launch.ConfigError, match="--amp means --precision fp16"):
        launch.options_from_args(parse("--amp", "--precision", "bf16"), "out")


def test_the_flags_reach_the_trainer(seg, tmp_path, monkeypatch):
    seen = {}
    original = Trainer._setup

    def setup(self):
        seen["options"] = (self.options.precision, self.options.amp_level)
        original(self)
        seen["precision"] = self.precision
    monkeypatch.setattr(Trainer, "_setup", setup)
    assert run_tool("train", "--config", seg["teacher"], "--iters", 1, "--amp", "--save_dir", tmp_path / "t") == 0
    assert seen["options"] == ("fp16", "O1")
    assert seen["precision"].requested == "fp16" and seen["precision"].name == "fp32"  # CPU


def test_pipeline_stage_amp_block(tmp_path):
    from slim.apps.pipeline import load_pipeline
    student = os.path.join(ROOT, "configs/depth/segformer_mscan_d7_nuclei.yml")
    path = tmp_path / "p.yml"
    path.write_text(f"defaults: {{amp: {{precision: bf16}}}}\nstages:\n"
                    f"  - {{name: a, student: {student}, amp: {{precision: fp16, level: O2}}}}\n"
                    f"  - {{name: b, student: {student}}}\n")
    _, stages = load_pipeline(str(path))
    assert stages[0].run["amp"] == ("fp16", "O2") and stages[1].run["amp"] == ("bf16", "O1")
    path.write_text(f"stages:\n  - {{name: a, student: {student}, amp: {{precision: fp12}}}}\n")
    with pytest.raises(launch.ConfigError, match="amp precision"):
        load_pipeline(str(path))


# ----- precision on this machine ---------------------------------------------------------------------
def test_cpu_falls_back_to_fp32_and_says_so():
    p = amp.Precision("fp16", "O2", device="cpu")
    assert p.name == "fp32" and not p.enabled and p.requested == "fp16"
    assert "fp32" in p.describe() and "auto_cast leaves tensors in float32" in p.describe()
    assert amp.build_scaler(p) is None
    assert amp.Precision("fp32").describe() == "precision: fp32"
    # what the fallback rests on: autocast leaves tensors in float32 on the CPU, for both dtypes
    if paddle.get_device().startswith("cpu"):
        for dtype in ("float16", "bfloat16"):
            with paddle.amp.auto_cast(True, level="O1", dtype=dtype):
                y = paddle.nn.functional.linear(paddle.randn([2, 4]), paddle.randn([4, 3]))
            assert y.dtype == paddle.float32


def test_fp16_run_trains_logs_its_precision_checkpoints_and_resumes(seg, tmp_path):
    a = tmp_path / "a"
    assert distill(seg, a, "--precision", "fp16") == 0
    log = (a / "record.txt").read_text()
    assert "precision: fp32 (fp16 O1 was asked for, but this run is on cpu" in log
    assert run_tool("distill_train", "--teacher_config", seg["teacher"], "--student_config", seg["feat"],
                    "--allow_untrained_teacher", "--iters", 6, "--seed", 0, "--precision", "fp16",
                    "--save_dir", a, "--resume_model", "auto") == 0
    assert "resumed from" in (a / "record.txt").read_text()


def test_logged_losses_equal_the_recorded_run(seg, tmp_path):
    assert distill(seg, tmp_path / "r") == 0
    rows = [json.loads(line) for line in (tmp_path / "r" / "history.jsonl").read_text().splitlines()]
    losses = {r["iter"]: {k: v for k, v in r.items() if k != "iter"} for r in rows if "Train/loss" in r}
    assert sorted(losses) == sorted(RECORDED)
    for it, expected in RECORDED.items():
        assert losses[it].keys() == expected.keys()
        for key, value in expected.items():
            assert losses[it][key] == pytest.approx(value, rel=1e-6, abs=1e-7), (it, key)
    assert "precision: fp32" in (tmp_path / "r" / "record.txt").read_text()


# ----- the loss scaler -------------------------------------------------------------------------------
def _tiny(clip=None):
    paddle.seed(0)
    layer = paddle.nn.Linear(4, 3)
    opt = paddle.optimizer.Momentum(0.1, parameters=layer.parameters(),
                                    grad_clip=paddle.nn.ClipGradByGlobalNorm(clip) if clip else None)
    return layer, opt


def test_train_step_with_a_scaler_unscales_before_clipping():
    x = paddle.to_tensor(np.linspace(-1, 1, 8, dtype="float32").reshape([2, 4]))
    results = []
    for scaler in (None, enabled_scaler(1024.0)):
        layer, opt = _tiny(clip=0.01)
        step = amp.train_step(lambda: {"l2": (layer(x) ** 2).mean() * 10}, opt, amp.Precision("fp32"), scaler)
        assert not step.skipped
        results.append(layer.weight.numpy().copy())
    # the same clipped update: the scaled gradients (x1024) were unscaled before the global-norm clip
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-7)


def test_a_skipped_step_is_not_an_error_and_the_scale_halves():
    scaler = enabled_scaler(1024.0)
    layer, opt = _tiny()
    before = layer.weight.numpy().copy()
    x = paddle.randn([2, 4])
    step = amp.train_step(lambda: {"bad": layer(x).mean() * float("nan")}, opt, None, scaler)
    assert step.skipped
    np.testing.assert_array_equal(layer.weight.numpy(), before)  # the update was skipped
    assert float(scaler.state_dict()["scale"][0]) == 512.0


def test_repeated_skipped_steps_stop_the_run_naming_the_terms(tmp_path):
    trainer = Trainer.__new__(Trainer)
    trainer.scaler, trainer.skipped_in_a_row, trainer.iter = enabled_scaler(), 0, 0
    trainer._pending, trainer._read, trainer._last_read = [], [], {}
    trainer.save_dir, trainer.options = str(tmp_path), argparse.Namespace(log_iters=10)
    vector = paddle.to_tensor([float("nan"), float("nan")])
    for i in range(amp.MAX_SKIPPED_STEPS - 1):
        trainer.iter += 1
        trainer._add_step(amp.StepLosses(["loss", "kd"], vector, skipped=True))
    assert trainer.take_losses() == []  # skipped steps: neither logged nor an error
    trainer.iter += 1
    with pytest.raises(NonFiniteLossError, match=f"skipped {amp.MAX_SKIPPED_STEPS} steps in a row"):
        trainer._add_step(amp.StepLosses(["loss", "kd"], vector, skipped=True))


def test_scaler_state_is_checkpointed_and_restored(seg, tmp_path, monkeypatch):
    """With a (CPU-enabled) scaler: train_state.pdstates holds its state, a resume loads it back."""
    monkeypatch.setattr("slim.engine.trainer.build_scaler", lambda precision: enabled_scaler(256.0))
    a = tmp_path / "a"
    assert run_tool("train", "--config", seg["teacher"], "--iters", 2, "--save_dir", a, "--seed", 0) == 0
    with open(a / "iter_2" / "train_state.pdstates", "rb") as f:
        state = pickle.load(f)
    assert float(state["scaler"]["scale"][0]) == 256.0 and state["scaler"]["incr_count"] == 2
    loaded = {}
    original = Trainer._resume

    def resume(self, path, ckpt=None):
        original(self, path, ckpt)
        loaded.update(self.scaler.state_dict())
    monkeypatch.setattr(Trainer, "_resume", resume)
    monkeypatch.setattr("slim.engine.trainer.build_scaler", lambda precision: enabled_scaler(8.0))
    assert run_tool("train", "--config", seg["teacher"], "--iters", 3, "--save_dir", a, "--seed", 0,
                    "--resume_model", a / "iter_2") == 0
    assert float(loaded["scale"][0]) == 256.0 and loaded["incr_count"] == 2


# ----- losses in fp32 --------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", [{"type": "KLLoss"}, {"type": "SegChannelwiseLoss", "tau": 4}, {"type": "L2Loss"}])
def test_losses_of_fp16_features_equal_the_fp32_result(spec):
    paddle.seed(1)
    s, t = paddle.randn([2, 3, 8, 8]) * 4, paddle.randn([2, 3, 8, 8]) * 4
    loss = build_loss(spec)
    s16, t16 = s.astype("float16"), t.astype("float16")
    assert float32(s16).dtype == paddle.float32
    reference = float(loss(s16.astype("float32"), t16.astype("float32")))  # the fp16-rounded inputs, in fp32
    assert float(loss(float32(s16), float32(t16))) == pytest.approx(reference, rel=1e-6)
    assert float(loss(float32(s16), float32(t16))) == pytest.approx(float(loss(s, t)), rel=5e-3, abs=1e-3)


def test_the_distiller_gives_losses_float32_inputs(monkeypatch):
    from slim.distill import Distiller
    seen = []

    class Half(paddle.nn.Layer):  # a model whose outputs are float16, as under autocast
        def __init__(self):
            super().__init__()
            self.lin = paddle.nn.Linear(4, 3)

        def forward(self, x):
            return self.lin(x).astype("float16")

    kl = build_loss({"type": "KLLoss"})
    original = type(kl).forward

    def forward(self, s, t, **kw):
        seen.append((s.dtype, t.dtype))
        return original(self, s, t, **kw)
    monkeypatch.setattr(type(kl), "forward", forward)
    paddle.seed(0)
    d = Distiller(Half(), Half(), [{"student": "$output", "teacher": "$output", "loss": "KLLoss"}])
    out = d(paddle.randn([2, 4]))
    assert seen == [(paddle.float32, paddle.float32)] and out.loss.dtype == paddle.float32


# ----- NaN at a log step -----------------------------------------------------------------------------
def test_a_nan_loss_term_stops_the_run_by_the_next_log_step(seg, tmp_path, monkeypatch):
    from slim.tasks.seg import task as seg_task
    original = seg_task.SegLoss.__call__
    calls = {"n": 0}

    def poisoned(self, output, batch):
        terms = original(self, output, batch)
        calls["n"] += 1
        if calls["n"] == 2:  # the second step
            name = next(iter(terms))
            terms[name] = terms[name] * float("nan")
        return terms
    monkeypatch.setattr(seg_task.SegLoss, "__call__", poisoned)
    steps = []
    original_step = Trainer.run_step

    def run_step(self, batch):
        steps.append(self.iter + 1)
        return original_step(self, batch)
    monkeypatch.setattr(Trainer, "run_step", run_step)
    with pytest.raises(NonFiniteLossError) as err:
        from slim.apps import train
        train.main(["--config", seg["teacher"], "--iters", "8", "--log_iters", "3", "--save_interval", "100",
                    "--save_dir", str(tmp_path / "nan"), "--seed", "0"])
    message = str(err.value)
    assert "The training loss became nan at iteration 2 (CrossEntropyLoss=nan)" in message
    assert max(steps) == 3  # found at the first log step after it
    assert not any(n.startswith("iter_") for n in os.listdir(tmp_path / "nan"))


def test_gpu_check_without_a_gpu_says_so_and_exits_0():
    import subprocess
    import sys
    if paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0:
        pytest.skip("a GPU is present: bench/gpu_check.py measures instead")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu_check.py")], capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip().splitlines()[-1] == "no GPU: nothing measured"
