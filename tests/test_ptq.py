"""Post-training quantisation (slim/quant/ptq.py, tools/ptq.py): abs_max calibration gives NumPy's scales; the
int8 model it writes runs in Paddle Inference near the fp32 model's top-1; a QAT checkpoint is refused."""
import json
import os

import numpy as np
import paddle

from slim.quant import is_quantized
from slim.quant.ptq import PTQSettings, calibrate
from tests.helpers.cli import run_tool
from tests.helpers.deploy_fixtures import trained_classifier


class TwoConvs(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.conv1 = paddle.nn.Conv2D(3, 4, 3)
        self.conv2 = paddle.nn.Conv2D(4, 2, 1)

    def forward(self, x):
        return self.conv2(paddle.nn.functional.relu(self.conv1(x)))


def test_abs_max_calibration_scales_are_the_largest_values_seen():
    model = TwoConvs()
    weights1, weights2 = model.conv1.weight.numpy(), model.conv2.weight.numpy()
    rng = np.random.RandomState(0)
    batches = [rng.randn(2, 3, 8, 8).astype("float32") * s for s in (1.0, 3.0, 0.5)]
    with paddle.no_grad():  # the second conv's inputs, from the fp32 model
        hidden = [paddle.nn.functional.relu(model.conv1(paddle.to_tensor(b))).numpy() for b in batches]
    calibrate(model, [paddle.to_tensor(b) for b in batches], PTQSettings(algo="abs_max"), log=lambda *a: None)
    assert is_quantized(model) and type(model.conv1).__name__ == "QuantizedConv2D"
    np.testing.assert_allclose(model.conv1._fake_quant_input._scale.numpy(),
                               [max(np.abs(b).max() for b in batches)], rtol=1e-6)
    np.testing.assert_allclose(model.conv2._fake_quant_input._scale.numpy(),
                               [max(h.max() for h in hidden)], rtol=1e-6)
    # weights: per output channel
    np.testing.assert_allclose(model.conv1._fake_quant_weight._scale.numpy(),
                               np.abs(weights1).reshape(4, -1).max(1), rtol=1e-6)
    np.testing.assert_allclose(model.conv2._fake_quant_weight._scale.numpy(),
                               np.abs(weights2).reshape(2, -1).max(1), rtol=1e-6)


def test_ptq_command_writes_an_int8_model_near_the_fp32_top1(tmp_path_factory, tmp_path, capsys):
    cls = trained_classifier(tmp_path_factory.getbasetemp())
    out = tmp_path / "ptq"
    assert run_tool("ptq", "-c", cls["config"], "--model_path", cls["fp32"], "--calib_batches", 4, "--batch_size", 32,
                    "--save_dir", out, "-o", *cls["opts"]) == 0
    assert os.path.isfile(out / "model.pdmodel")
    assert "PTQ (KL): calibrated on 4 batch(es)" in capsys.readouterr().out
    assert run_tool("eval", "-c", cls["config"], "--model_path", cls["fp32"], "--save_json", tmp_path / "fp32.json",
                    "--save_dir", tmp_path, "-o", *cls["opts"]) == 0
    assert run_tool("eval", "-c", cls["config"], "--inference_model", out, "--warmup", 1, "--repeats", 3,
                    "--save_json", tmp_path / "ptq.json", "-o", *cls["opts"]) == 0
    with open(tmp_path / "fp32.json") as f:
        fp32 = json.load(f)["top1"]
    with open(tmp_path / "ptq.json") as f:
        ptq = json.load(f)
    assert ptq["precision"] == "int8"
    assert abs(ptq["top1"] - fp32) <= 0.02, (ptq["top1"], fp32)  # 8-bit scales from 128 images cost little here


def test_ptq_of_a_qat_checkpoint_is_refused(tmp_path_factory, tmp_path, capsys):
    cls = trained_classifier(tmp_path_factory.getbasetemp())
    assert run_tool("ptq", "-c", cls["config"], "--model_path", cls["qat"], "--save_dir", tmp_path / "ptq",
                    "-o", *cls["opts"]) == 2
    assert "already quantised" in capsys.readouterr().err
    assert not (tmp_path / "ptq").exists()
