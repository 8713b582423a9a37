"""slim.quant.qat: the QAT settings (PaddleSlim's keys and defaults, clear errors), the wrapped model against
PaddleSlim's dygraph QAT and against NumPy (moving-average activation scales, channel-wise weight scales, PACT),
the QAT / fp32 weights checks, and the int8 inference model."""
import os

import numpy as np
import paddle
import pytest

from slim.distill.errors import ConfigError
from slim.quant import (QuantSettings, is_quantized, quant_settings, quant_settings_of, quantize_model,
                        save_quantized_inference_model, state_is_quantized, weights_order)
from slim.quant.qat import PACT


def small_net():
    paddle.seed(0)
    return paddle.nn.Sequential(paddle.nn.Conv2D(3, 4, 3), paddle.nn.BatchNorm2D(4), paddle.nn.ReLU(),
                                paddle.nn.Flatten(), paddle.nn.Linear(4 * 6 * 6, 3))


def test_defaults_are_paddleslim_s_dygraph_qat_defaults():
    from paddleslim.dygraph.quant.qat import _quant_config_default
    ours = quant_settings({}).quanter_config()
    assert ours == dict(_quant_config_default, quantizable_layer_type=["Conv2D", "Linear"])
    # the three PACT spellings
    for section in ({"use_pact": True}, {"name": "pact"}, {"activation_preprocess_type": "PACT"}):
        assert quant_settings(section).activation_preprocess_type == "PACT"
    assert quant_settings_of({"Slim": {"quant": {"name": "pact"}}}).pact
    assert quant_settings_of({"model": {}}) is None


@pytest.mark.parametrize("section,named", [
    ({"weight_quantize_type": "channel_wise_abs"}, "channel_wise_abs_max"),
    ({"activation_quantize_type": "range_abs_max"}, "activation_quantize_type"),
    ({"weight_bits": 0}, "weight_bits"), ({"activation_bits": "8"}, "activation_bits"),
    ({"moving_rate": 1.5}, "moving_rate"), ({"dtype": "uint8"}, "dtype"),
    ({"quantizable_layer_type": ["Conv2d"]}, "Conv2D"), ({"window_size": -1}, "window_size"),
    ({"name": "lsq"}, "name: pact"), ({"use_pact": "yes"}, "use_pact"), ({"weight_bit": 8}, "weight_bits"),
    ([1, 2], "mapping"),
])
def test_bad_settings_are_errors_naming_the_key(section, named):
    with pytest.raises(ConfigError, match=named):
        quant_settings(section)


def test_wrapped_model_equals_paddleslim_qat_with_and_without_pact():
    import paddleslim
    x = paddle.to_tensor(np.random.RandomState(1).randn(2, 3, 8, 8).astype("float32"))
    for section in ({}, {"activation_preprocess_type": "PACT"}):
        ours, theirs = small_net(), small_net()
        quantize_model(ours, quant_settings(section))
        paddleslim.QAT(config=dict(section)).quantize(theirs)
        assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
        ours.train(), theirs.train()
        for _ in range(3):  # the observers update in training mode
            np.testing.assert_array_equal(ours(x).numpy(), theirs(x).numpy())
        ours.eval(), theirs.eval()
        np.testing.assert_array_equal(ours(x).numpy(), theirs(x).numpy())


def fake_quant(x, scale, bits=8):
    q = 2 ** (bits - 1) - 1
    return np.round(np.clip(x, -scale, scale) / scale * q) * scale / q


def test_linear_fake_quant_and_observer_equal_numpy():
    paddle.seed(3)
    layer = paddle.nn.Sequential(paddle.nn.Linear(6, 4))
    quantize_model(layer, quant_settings({"moving_rate": 0.8, "activation_bits": 6}))
    q = layer[0]._layer
    w, b = q.weight.numpy(), q.bias.numpy()
    rng = np.random.RandomState(0)
    state, accum = 1.0, 1.0  # Paddle's initial observer state
    layer.train()
    for _ in range(3):
        x = rng.randn(5, 6).astype("float32") * 2
        layer(paddle.to_tensor(x))
        state, accum = 0.8 * state + 1, 0.8 * accum + np.abs(x).max()
    obs = q._fake_quant_input
    np.testing.assert_allclose([obs._state.item(), obs._accum.item(), obs._scale.item()],
                               [state, accum, accum / state], rtol=1e-6)
    layer.eval()
    x = rng.randn(5, 6).astype("float32")
    w_scale = np.abs(w).max(axis=0)  # Linear weights [in, out]: one scale per output channel
    want = fake_quant(x, accum / state, bits=6) @ fake_quant(w, w_scale) + b
    np.testing.assert_allclose(layer(paddle.to_tensor(x)).numpy(), want, rtol=1e-5, atol=1e-5)


def test_pact_clips_to_alpha_as_numpy_and_learns_alpha_1000x():
    pact = PACT()
    assert pact.alpha.item() == 100.0 and pact.alpha.optimize_attr["learning_rate"] == 1000.0
    pact.alpha.set_value(paddle.to_tensor([1.5]))
    x = np.linspace(-4, 4, 17).astype("float32")
    np.testing.assert_allclose(pact(paddle.to_tensor(x)).numpy(), np.clip(x, -1.5, 1.5), rtol=0, atol=1e-7)


def test_quantize_is_idempotent_and_other_settings_are_an_error():
    net = small_net()
    settings = quant_settings({})
    assert not is_quantized(net) and not state_is_quantized(net.state_dict())
    quantize_model(net, settings)
    keys = sorted(net.state_dict())
    assert quantize_model(net, quant_settings({})) is net and sorted(net.state_dict()) == keys
    assert is_quantized(net) and state_is_quantized(keys)
    with pytest.raises(ConfigError, match="already quantised"):
        quantize_model(net, quant_settings({"weight_bits": 4}))


def test_weights_order_and_its_errors():
    fp32, qat = ["0.weight", "0.bias"], ["0._layer.weight", "0._layer._fake_quant_input._scale"]
    s = quant_settings({})
    assert weights_order(fp32, None, "w") is None and weights_order(fp32, s, "w") == "after"
    assert weights_order(qat, s, "w") == "before"
    with pytest.raises(ConfigError, match="--quant_config"):
        weights_order(qat, None, "The weights X")
    with pytest.raises(ConfigError, match="fp32 model"):
        weights_order(fp32, s, "The weights X", training=False)


def test_int8_inference_model_is_written_and_the_model_is_left_as_it_was(tmp_path):
    net = small_net()
    settings = quant_settings({"use_pact": True, "onnx_format": False})
    quantize_model(net, settings)
    net.train()
    x = paddle.to_tensor(np.random.RandomState(2).randn(2, 3, 8, 8).astype("float32"))
    for _ in range(4):
        net(x)
    net.eval()
    expected = net(x).numpy()
    net.train()
    prefix = str(tmp_path / "int8" / "model")
    save_quantized_inference_model(net, prefix, [paddle.static.InputSpec([None, 3, 8, 8], "float32")], settings)
    assert paddle.in_dynamic_mode() and net.training
    assert net[0]._layer._act_preprocess is not None  # PACT back in place after the export
    files = os.listdir(tmp_path / "int8")
    assert "model.pdiparams" in files and any(f in files for f in ("model.pdmodel", "model.json"))
    from paddle import inference  # the saved program runs (plain CPU kernels) and computes the QAT model's outputs
    model_file = next(f"{prefix}{ext}" for ext in (".json", ".pdmodel") if os.path.isfile(f"{prefix}{ext}"))
    config = inference.Config(model_file, f"{prefix}.pdiparams")
    config.disable_mkldnn()
    predictor = inference.create_predictor(config)
    predictor.get_input_handle(predictor.get_input_names()[0]).copy_from_cpu(x.numpy())
    predictor.run()
    got = predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()
    np.testing.assert_allclose(got, expected, rtol=0, atol=0.02 * np.abs(expected).max())
    with pytest.raises(ConfigError, match="quantised model"):
        save_quantized_inference_model(small_net(), prefix, None, settings)


def test_settings_compare_by_value():
    assert quant_settings({"use_pact": True}) == quant_settings({"name": "pact"})
    assert isinstance(quant_settings(True), QuantSettings)
