"""The moving average of the weights (`ema:`, ppdet's use_ema): formula against NumPy, what the trainer saves,
evaluates and resumes."""
import json

import numpy as np
import paddle
import pytest

from slim.distill.errors import ConfigError
from slim.engine.ema import ModelEMA, ema_settings
from slim.tasks.det.settings import training_settings
from tests.helpers.cli import run_tool
from tests.helpers.cls_fixtures import STUDENT_MODEL, base_config, write_yaml
from tests.helpers.resume import assert_same_weights, run_interrupted
from slim.datasets import mnist


def numpy_ema(states, decay, kind):
    """Independent reference: ppdet's ModelEMA update and apply written out in NumPy."""
    acc = {k: np.zeros_like(v) for k, v in states[0].items()}
    d = None
    for step, state in enumerate(states):
        if kind == "threshold":
            d = min(decay, (1 + step) / (10 + step))
        elif kind == "exponential":
            d = decay * (1 - np.exp(-(step + 1) / 2000))
        else:
            d = decay
        acc = {k: d * acc[k] + (1 - d) * state[k] for k in acc}
    correction = 1.0 if kind == "exponential" else 1 - d ** len(states)
    return {k: v / correction for k, v in acc.items()}


@pytest.mark.parametrize("kind,decay", [("threshold", 0.9998), ("threshold", 0.5), ("normal", 0.9),
                                        ("exponential", 0.9998)])
def test_average_matches_numpy(kind, decay):
    model = paddle.nn.Sequential(paddle.nn.Linear(3, 4), paddle.nn.BatchNorm1D(4))
    ema = ModelEMA(model, decay=decay, type=kind)
    rng = np.random.RandomState(0)
    states = []
    for _ in range(7):
        state = {k: rng.randn(*v.shape).astype("float32") for k, v in model.state_dict().items()}
        model.set_state_dict(state)
        ema.update(model)
        states.append(state)
    expected = numpy_ema(states, decay, kind)
    got = ema.averaged_state(model)
    assert sorted(got) == sorted(expected)  # BatchNorm statistics are averaged too, as in ppdet
    for key in expected:
        np.testing.assert_allclose(got[key].numpy(), expected[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_black_list_keeps_the_current_values():
    model = paddle.nn.Sequential(paddle.nn.Linear(2, 2), paddle.nn.BatchNorm1D(2))
    ema = ModelEMA(model, decay=0.9, type="normal", black_list=["_mean", "_variance"])
    for value in (1.0, 3.0):
        model.set_state_dict({k: np.full(v.shape, value, "float32") for k, v in model.state_dict().items()})
        ema.update(model)
    got = ema.averaged_state(model)
    assert got["1._mean"].numpy().tolist() == [3.0, 3.0]
    expected = (0.9 * 0.1 * 1.0 + 0.1 * 3.0) / (1 - 0.9 ** 2)
    np.testing.assert_allclose(got["0.weight"].numpy(), np.full([2, 2], expected), rtol=1e-6)


def test_settings_are_checked_and_ppdet_keys_translate():
    assert ema_settings(None) is None and ema_settings(False) is None
    assert ema_settings(True) == {"decay": 0.9998, "type": "threshold", "black_list": []}
    with pytest.raises(ConfigError, match="ema.decay must be in"):
        ema_settings({"decay": 1.5})
    with pytest.raises(ConfigError, match="threshold, normal, exponential"):
        ema_settings({"type": "linear"})
    with pytest.raises(ConfigError, match="unknown key"):
        ema_settings({"decy": 0.9})
    ppdet = {"epoch": 2, "TrainReader": {"batch_size": 2}, "LearningRate": {"base_lr": 0.01},
             "use_ema": True, "ema_decay": 0.999, "ema_decay_type": "normal", "ema_black_list": ["bn"]}
    assert training_settings(ppdet, 5)["ema"] == {"decay": 0.999, "type": "normal", "black_list": ["bn"]}
    assert training_settings(dict(ppdet, use_ema=False), 5)["ema"] is None
    with pytest.raises(ConfigError, match="cycle_epoch"):
        training_settings(dict(ppdet, cycle_epoch=10), 5)


@pytest.fixture(scope="module")
def cls_ema(tmp_path_factory):
    root = tmp_path_factory.mktemp("ema")
    data = str(root / "data")
    mnist.prepare(data, per_class=4)
    base = dict(base_config(data, iters=5, batch_size=8), model=STUDENT_MODEL)
    return {"root": root, "plain": write_yaml(str(root / "plain.yml"), base),
            "ema": write_yaml(str(root / "ema.yml"), dict(base, ema={"decay": 0.7, "type": "normal"}))}


def test_trainer_saves_and_evaluates_the_average_and_trains_the_plain_weights(cls_ema):
    root = cls_ema["root"]
    common = ["--iters", 5, "--seed", 2, "--log_iters", 1]
    assert run_tool("train", "--config", cls_ema["plain"], *common, "--save_interval", 1, "--keep_checkpoint_max", 0,
                    "--save_dir", root / "plain") == 0
    assert run_tool("train", "--config", cls_ema["ema"], *common, "--save_interval", 5, "--do_eval",
                    "--eval_interval", 2, "--save_dir", root / "ema") == 0
    plain = [paddle.load(str(root / "plain" / f"iter_{i}" / "model.pdparams")) for i in range(1, 6)]
    saved = paddle.load(str(root / "ema" / "iter_5" / "model.pdparams"))
    trained = paddle.load(str(root / "ema" / "iter_5" / "ema.pdparams"))["training_weights"]
    # the average does not change training (evaluating it in between included): same weights as the plain run
    for key, value in plain[-1].items():
        np.testing.assert_allclose(trained[key].numpy(), value.numpy(), rtol=1e-5, atol=1e-6, err_msg=key)
    expected = numpy_ema([{k: v.numpy() for k, v in s.items()} for s in plain], 0.7, "normal")
    for key, value in expected.items():
        np.testing.assert_allclose(saved[key].numpy(), value, rtol=1e-5, atol=1e-6, err_msg=key)
    assert any(not np.allclose(saved[k].numpy(), trained[k].numpy()) for k in saved)  # the average is saved
    # the last evaluation scored the saved average: tools/eval on model.pdparams gives the same numbers
    history = [json.loads(line) for line in (root / "ema" / "history.jsonl").read_text().splitlines()]
    logged = [h for h in history if h["iter"] == 5 and "Evaluate/top1" in h]
    assert run_tool("eval", "--config", cls_ema["ema"], "--model_path", root / "ema" / "iter_5" / "model.pdparams",
                    "--save_json", root / "eval.json") == 0
    evaluated = json.loads((root / "eval.json").read_text())
    assert len(logged) == 1 and evaluated["top1"] == pytest.approx(logged[0]["Evaluate/top1"])
    assert "EMA, decay 0.7, normal" in (root / "ema" / "record.txt").read_text()
    # ema.pdparams given as weights: the weights as trained, which score as the plain run's
    assert run_tool("eval", "--config", cls_ema["plain"], "--model_path", root / "ema" / "iter_5" / "ema.pdparams",
                    "--save_json", root / "eval_trained.json") == 0
    assert run_tool("eval", "--config", cls_ema["plain"], "--model_path", root / "plain" / "iter_5" / "model.pdparams",
                    "--save_json", root / "eval_plain.json") == 0
    assert json.loads((root / "eval_trained.json").read_text()) == json.loads((root / "eval_plain.json").read_text())


def test_resume_with_ema_equals_an_unbroken_run(cls_ema):
    root = cls_ema["root"]
    common = ["--config", cls_ema["ema"], "--iters", 5, "--seed", 4, "--save_interval", 100, "--log_iters", 1]
    assert run_tool("train", *common, "--save_dir", root / "unbroken") == 0
    assert run_interrupted(3, "train", *common, "--save_dir", root / "broken") == 130
    assert run_tool("train", *common, "--save_dir", root / "broken", "--resume_model", root / "broken" / "iter_3") == 0
    assert_same_weights(root / "unbroken" / "iter_5", root / "broken" / "iter_5")
    a = paddle.load(str(root / "unbroken" / "iter_5" / "ema.pdparams"))
    b = paddle.load(str(root / "broken" / "iter_5" / "ema.pdparams"))
    assert a["step"] == b["step"] == 5
    for key in a["accumulator"]:
        np.testing.assert_allclose(a["accumulator"][key].numpy(), b["accumulator"][key].numpy(), rtol=1e-5, atol=1e-6)
