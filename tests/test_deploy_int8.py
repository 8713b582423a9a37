"""The int8 deployment of a QAT checkpoint: tools/export.py writes it, tools/eval.py --inference_model evaluates it
through Paddle Inference (oneDNN int8) with the same metric as the dygraph QAT model, within 0.5 points; the
mistakes users make are clear errors."""
import json
import os

import pytest

from tests.helpers.cli import run_tool
from tests.helpers.deploy_fixtures import trained_classifier


@pytest.fixture(scope="module")
def cls(tmp_path_factory):
    paths = trained_classifier(tmp_path_factory.getbasetemp())
    out = os.path.join(paths["root"], "export_int8")
    if not os.path.isfile(os.path.join(out, "model.pdmodel")):
        assert run_tool("export", "-c", paths["config"], "--model_path", paths["qat"], "--quant_config",
                        paths["quant_config"], "--save_dir", out, "--check_shape", "1,1,28,28",
                        "-o", *paths["opts"]) == 0
    paths["int8"] = out
    return paths


def read_json(path):
    with open(path) as f:
        return json.load(f)


def test_exported_int8_model_has_the_dygraph_qat_models_top1_within_half_a_point(cls, tmp_path, capsys):
    assert run_tool("eval", "-c", cls["config"], "--model_path", cls["qat"], "--quant_config", cls["quant_config"],
                    "--save_json", tmp_path / "dygraph.json", "-o", *cls["opts"]) == 0
    assert run_tool("eval", "-c", cls["config"], "--inference_model", cls["int8"], "--precision", "int8",
                    "--threads", 1, "--warmup", 2, "--repeats", 5, "--save_json", tmp_path / "int8.json",
                    "-o", *cls["opts"]) == 0
    out = capsys.readouterr().out
    dygraph, int8 = read_json(tmp_path / "dygraph.json"), read_json(tmp_path / "int8.json")
    assert abs(int8["top1"] - dygraph["top1"]) <= 0.005, (int8["top1"], dygraph["top1"])
    assert dygraph["top1"] > 0.8  # a trained model: the comparison means something
    assert "Paddle Inference:" in out and "(int8 (quantize/dequantize ops) export) on CPU, oneDNN int8" in out
    assert "ops in int8: 2 fused_conv2d" in out  # both convolutions of the student run in int8
    assert "latency per image (1x1x28x28, batch 1, CPU, oneDNN int8, 1 thread(s)): median" in out
    assert int8["latency_ms_median"] > 0 and int8["precision"] == "int8"


def test_int8_export_writes_int8_weights_and_a_deploy_yaml(cls):
    import yaml
    with open(os.path.join(cls["int8"], "deploy.yaml")) as f:
        deploy = yaml.safe_load(f)["Deploy"]
    assert deploy["precision"] == "int8" and deploy["task"] == "cls"
    assert sorted(f for f in os.listdir(cls["int8"]) if f.startswith("model.")) == [
        "model.pdiparams", "model.pdiparams.info", "model.pdmodel"]


def test_qat_checkpoint_without_its_quant_settings_is_an_error_not_an_fp32_export(cls, tmp_path, capsys):
    out = tmp_path / "export"
    assert run_tool("export", "-c", cls["config"], "--model_path", cls["qat"], "--save_dir", out,
                    "-o", *cls["opts"]) == 2
    err = capsys.readouterr().err
    assert "quantisation-aware (QAT)" in err and "--quant_config" in err
    assert not out.exists()


def test_fp32_weights_with_quant_settings_are_an_error(cls, tmp_path, capsys):
    assert run_tool("export", "-c", cls["config"], "--model_path", cls["fp32"], "--quant_config", cls["quant_config"],
                    "--save_dir", tmp_path / "export", "-o", *cls["opts"]) == 2
    assert "fp32 model (no fake-quant scales)" in capsys.readouterr().err


def test_an_fp32_export_cannot_be_evaluated_in_int8(cls, tmp_path, capsys):
    fp32 = tmp_path / "fp32"
    assert run_tool("export", "-c", cls["config"], "--model_path", cls["fp32"], "--save_dir", fp32,
                    "--check_shape", "1,1,28,28", "-o", *cls["opts"]) == 0
    assert os.path.isfile(fp32 / "model.json")
    assert run_tool("eval", "-c", cls["config"], "--inference_model", fp32, "--precision", "int8",
                    "-o", *cls["opts"]) == 2
    assert "is an fp32 export" in capsys.readouterr().err
    assert run_tool("eval", "-c", cls["config"], "--inference_model", tmp_path / "nothing", "-o", *cls["opts"]) == 2
    assert "no exported model there" in capsys.readouterr().err
