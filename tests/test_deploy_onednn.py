"""Exports Paddle Inference runs with oneDNN (slim/quant/export_compat.py): the resize ops written with matmul or
gather equal Paddle's kernel (checked against a NumPy transcription of paddle/phi/kernels/cpu/interpolate_kernel.cc) and
run under oneDNN; conv + leaky_relu runs; old-IR traces of PIR-only APIs work; the bugs still exist without the
workarounds."""
import json
import os

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from slim.quant.export_compat import legacy_static_apis, onednn_pir_ops, unsupported_ops_in
from slim.quant.inference import InferenceSettings, Predictor


# ----- a NumPy transcription of Paddle's CPU resize kernel ------------------------------------------------------
def _axis_table(n_in, n_out, method, align_corners, align_mode, scale=None):
    """(low index, high index, weight of high) per output position, as interpolate_kernel.cc computes them: the
    ratio in float32, the half-pixel position in double, truncation, clamping."""
    if n_out > 1:
        new_scale = np.float32(1.0 / scale) if scale else np.float32(np.float32(n_in) / np.float32(n_out))
        ratio = np.float32(np.float32(n_in - 1) / np.float32(n_out - 1)) if align_corners else new_scale
    else:
        ratio = np.float32(0.0)
    rows = []
    for k in range(n_out):
        if method == "nearest":
            rows.append((int(np.float32(ratio * np.float32(k))), 0, 0.0))
            continue
        if align_mode == 0 and not align_corners:
            src = float(ratio) * (k + 0.5) - 0.5
            low = max(int(src), 0)
            weight = np.float32(max(np.float32(src), np.float32(0.0)) - np.float32(low))
        else:
            pos = np.float32(ratio * np.float32(k))
            low = max(int(pos), 0)
            weight = np.float32(pos - np.float32(low))
        rows.append((low, min(low + 1, n_in - 1), float(weight)))
    return rows


def numpy_resize(x, out_hw, method="bilinear", align_corners=False, align_mode=0, scale=None):
    """NCHW float32 resize written out as Paddle's kernel does it (the 2-D bilinear sum of four terms)."""
    n, c, h, w = x.shape
    ys = _axis_table(h, out_hw[0], method, align_corners, align_mode, scale)
    xs = _axis_table(w, out_hw[1], method, align_corners, align_mode, scale)
    out = np.zeros((n, c) + tuple(out_hw), np.float32)
    for k, (yn, ysouth, dn) in enumerate(ys):
        for l, (xw, xe, dw) in enumerate(xs):
            if method == "nearest":
                out[:, :, k, l] = x[:, :, yn, xw]
                continue
            ds, de = 1.0 - dn, 1.0 - dw
            out[:, :, k, l] = (x[:, :, yn, xw] * ds * de + x[:, :, ysouth, xw] * dn * de
                               + x[:, :, yn, xe] * ds * dw + x[:, :, ysouth, xe] * dn * dw)
    return out


class Resize(paddle.nn.Layer):
    def __init__(self, size_kind, **kwargs):
        super().__init__()
        self.size_kind, self.kwargs = size_kind, kwargs

    def forward(self, x):
        if self.size_kind == "tensor":  # PaddleSeg's form: the size from the input's shape
            return F.interpolate(x, size=paddle.shape(x)[2:] * 3 + 1, **self.kwargs)
        if self.size_kind == "list":
            return F.interpolate(x, size=[37, 20], **self.kwargs)
        return F.interpolate(x, scale_factor=self.size_kind, **self.kwargs)  # ppdet's form


def _program_ops(prefix):
    with open(prefix + ".json") as f:
        program = json.load(f)["program"]
    return [op["#"].split(".", 1)[-1] for op in program["regions"][0]["blocks"][0]["ops"]]


def _onednn(prefix_dir, x, precision="fp32"):
    predictor = Predictor(prefix_dir, InferenceSettings(precision=precision, threads=1))
    return predictor.run([x])[0]


X = np.random.RandomState(3).randn(2, 3, 23, 17).astype("float32")
CASES = [  # (size, kwargs, out_hw, numpy kwargs)
    ("tensor", dict(mode="bilinear", align_corners=False), (70, 52), {}),
    ("tensor", dict(mode="bilinear", align_corners=True), (70, 52), dict(align_corners=True)),
    ("list", dict(mode="bilinear", align_mode=1), (37, 20), dict(align_mode=1)),
    ("list", dict(mode="nearest"), (37, 20), dict(method="nearest")),
    (1.7, dict(mode="bilinear"), (39, 28), dict(scale=1.7)),
    (3.0, dict(mode="nearest"), (69, 51), dict(method="nearest", scale=3.0)),
]


@pytest.mark.parametrize("size,kwargs,out_hw,np_kwargs", CASES)
def test_resize_is_exported_without_interp_ops_and_equals_paddles_kernel_under_onednn(tmp_path, size, kwargs,
                                                                                       out_hw, np_kwargs):
    layer = Resize(size, **kwargs)
    reference = numpy_resize(X, out_hw, **np_kwargs)
    dygraph = layer(paddle.to_tensor(X)).numpy()
    np.testing.assert_allclose(dygraph, reference, rtol=1e-5, atol=1e-5)  # the transcription is Paddle's kernel
    prefix = str(tmp_path / "model")
    with onednn_pir_ops():
        paddle.jit.save(layer, prefix, input_spec=[paddle.static.InputSpec([None, 3, None, None], "float32", "x")])
    assert unsupported_ops_in(_program_ops(prefix)) == []
    # nearest: gathers; linear: a matmul per axis with the interpolation matrix (no gather: fast under oneDNN)
    nearest = np_kwargs.get("method") == "nearest"
    assert ("gather" in _program_ops(prefix)) == nearest and ("matmul" in _program_ops(prefix)) != nearest
    got = _onednn(str(tmp_path), X)
    assert got.shape == reference.shape
    np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-5)
    if np_kwargs.get("method") == "nearest":
        np.testing.assert_array_equal(got, dygraph)  # indices, not arithmetic: exactly Paddle's


class ResizeNHWC(paddle.nn.Layer):
    def forward(self, x):
        return F.interpolate(x, size=paddle.shape(x)[1:3] * 2 + 3, mode="bilinear", data_format="NHWC")


def test_channels_last_resize_equals_paddles_kernel_under_onednn(tmp_path):
    """NHWC: H is resized with gathers, W (the second-last axis) with a matmul from the left."""
    x = np.ascontiguousarray(X.transpose(0, 2, 3, 1))
    layer = ResizeNHWC()
    dygraph = layer(paddle.to_tensor(x)).numpy()
    np.testing.assert_allclose(dygraph.transpose(0, 3, 1, 2), numpy_resize(X, (49, 37)), rtol=1e-5, atol=1e-5)
    with onednn_pir_ops():
        paddle.jit.save(layer, str(tmp_path / "model"),
                        input_spec=[paddle.static.InputSpec([None, None, None, 3], "float32", "x")])
    assert {"gather", "matmul"} <= set(_program_ops(str(tmp_path / "model")))
    np.testing.assert_allclose(_onednn(str(tmp_path), x), dygraph, rtol=1e-5, atol=1e-5)


def test_dygraph_calls_inside_the_block_keep_paddles_kernels():
    layer = Resize("list", mode="bilinear")
    outside = layer(paddle.to_tensor(X)).numpy()
    with onednn_pir_ops():
        inside = layer(paddle.to_tensor(X)).numpy()
    np.testing.assert_array_equal(inside, outside)


def test_paddle_still_fails_on_resize_ops_under_onednn_without_the_workaround(tmp_path):
    """Paddle #79749: if this starts passing, the workaround can go."""
    paddle.jit.save(Resize("list", mode="bilinear"), str(tmp_path / "model"),
                    input_spec=[paddle.static.InputSpec([None, 3, None, None], "float32", "x")])
    assert "bilinear_interp" in _program_ops(str(tmp_path / "model"))
    with pytest.raises(NotImplementedError, match="ConvertPirAttribute2RuntimeAttribute"):
        _onednn(str(tmp_path), X)


class ConvLeaky(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.conv = paddle.nn.Conv2D(3, 4, 3)
        self.bn = paddle.nn.BatchNorm2D(4)

    def forward(self, x):
        return F.leaky_relu(self.bn(self.conv(x)), 0.1)


def test_conv_leaky_relu_is_exported_as_a_maximum_and_runs_under_onednn(tmp_path):
    layer = ConvLeaky()
    layer.eval()
    with paddle.no_grad():
        features = layer.bn(layer.conv(paddle.to_tensor(X))).numpy()
    reference = np.where(features > 0, features, 0.1 * features)
    with onednn_pir_ops():
        paddle.jit.save(layer, str(tmp_path / "model"),
                        input_spec=[paddle.static.InputSpec([None, 3, None, None], "float32", "x")])
    assert "leaky_relu" not in _program_ops(str(tmp_path / "model"))
    np.testing.assert_allclose(_onednn(str(tmp_path), X), reference, rtol=1e-5, atol=1e-5)


class SqueezeExcite(paddle.nn.Layer):
    """MobileNetV3's SE block as PaddleSeg writes it: paddle.multiply and a sigmoid."""

    def __init__(self):
        super().__init__()
        self.conv = paddle.nn.Conv2D(3, 3, 1)

    def forward(self, x):
        return paddle.multiply(x=x, y=F.sigmoid(self.conv(x)))


def _save_old_ir(layer, prefix):
    with paddle.pir_utils.OldIrGuard():
        paddle.jit.save(layer, prefix, input_spec=[paddle.static.InputSpec([None, 3, None, None], "float32", "x")])


def test_old_ir_traces_of_pir_only_apis(tmp_path):
    layer = SqueezeExcite()
    layer.eval()
    x = paddle.to_tensor(X)
    expected = (x * F.sigmoid(layer.conv(x))).numpy()
    with pytest.raises(TypeError, match="must be Value, but got Variable"):  # Paddle 3.3.1 without the workaround
        _save_old_ir(SqueezeExcite(), str(tmp_path / "plain" / "model"))
    before = (paddle._C_ops.multiply, paddle._C_ops.sigmoid)
    with legacy_static_apis():
        _save_old_ir(layer, str(tmp_path / "model"))
    assert (paddle._C_ops.multiply, paddle._C_ops.sigmoid) == before  # put back afterwards
    assert os.path.isfile(tmp_path / "model.pdmodel")
    np.testing.assert_allclose(_onednn(str(tmp_path), X), expected, rtol=1e-5, atol=1e-6)


# ----- every task's export, fp32 and int8, through tools/export.py -----------------------------------------------
# (config, -o overrides, calibration input shape, precisions): the seg demo student (LR-ASPP MobileNetV3: resize and
# SE blocks) and the tutorial student (DeepLabV3P ResNet18_vd; its int8 export takes the same path as LR-ASPP's and
# is left out for time), a classifier, a detector (PP-YOLO-Tiny with its NMS), a PaddleClas MobileNetV3 (SE blocks:
# paddle.multiply in the old-IR int8 trace)
TASK_EXPORTS = {
    "seg_lraspp": ("configs/seg/demo/student.yml", [], [2, 3, 64, 64], ("fp32", "int8")),
    "seg_deeplabv3p": ("configs/seg/deeplabv3p_resnet18_vd_nuclei_student.yml", [], [2, 3, 64, 64], ("fp32",)),
    "cls_convnet": ("configs/cls/convnet_student_mnist.yml", [], [2, 1, 28, 28], ("fp32", "int8")),
    "det_ppyolo_tiny": ("configs/det/ppyolo_tiny_trees_student.yml", [], [1, 3, 128, 128], ("fp32", "int8")),
    "ppcls_mobilenetv3": ("configs/ppcls/ResNet50_vd_mnist.yaml", ["Arch.name=MobileNetV3_small_x0_35"],
                          [2, 3, 32, 32], ("fp32", "int8")),
}
QUANT_YML = "quant:\n  weight_quantize_type: channel_wise_abs_max\n  activation_quantize_type: moving_average_abs_max\n"


def _weights(name, tmp_path, qat=True):
    """(fp32 weights, QAT checkpoint, quant config) of the model of TASK_EXPORTS[name] at its random start; the
    QAT scales from two forward passes (the fake-quant layers in training mode, the rest in eval mode)."""
    from slim.apps.launch import load_task_config
    from slim.quant import quant_settings, quantize_model
    from slim.quant.training import quant_target
    from tests.helpers.cli import ROOT
    config, opts, shape, _ = TASK_EXPORTS[name]
    task, cfg = load_task_config(os.path.join(ROOT, config), opts)
    model = task.build_model(cfg)
    fp32 = str(tmp_path / "fp32.pdparams")
    paddle.save(model.state_dict(), fp32)
    if not qat:
        return fp32, None, None
    quantize_model(quant_target(task, model), quant_settings({}))
    layer = task.export_model(model, cfg)
    layer.eval()
    for sub in layer.sublayers():
        if type(sub).__module__.endswith("quant_layers"):
            sub.training = True
    with paddle.no_grad():
        for seed in range(2):
            layer(paddle.to_tensor(np.random.RandomState(seed).rand(*shape).astype("float32")))
    qat = str(tmp_path / "qat.pdparams")
    paddle.save(model.state_dict(), qat)
    quant_yml = tmp_path / "quant.yml"
    quant_yml.write_text(QUANT_YML)
    return fp32, qat, str(quant_yml)


@pytest.mark.parametrize("name", sorted(TASK_EXPORTS))
def test_every_tasks_export_runs_in_paddle_inference_with_onednn_fp32_and_int8(tmp_path, name):
    import yaml

    from tests.helpers.cli import ROOT, run_tool
    config, opts, shape, precisions = TASK_EXPORTS[name]
    fp32, qat, quant_yml = _weights(name, tmp_path, "int8" in precisions)
    check = ",".join(str(v) for v in [1] + shape[1:])
    extra = ["-o", *opts] if opts else []
    is_ppcls = name.startswith("ppcls")
    for precision, weights, flags in (("fp32", fp32, []), ("int8", qat, ["--quant_config", quant_yml])):
        if precision not in precisions:
            continue
        out = tmp_path / precision
        args = ["-c", os.path.join(ROOT, config), "--model_path", weights, "--save_dir", out, *flags, *extra]
        if not is_ppcls:
            args += ["--check_shape", check]
        assert run_tool("export", *args) == 0, precision
        program = "inference" if is_ppcls else "model"
        assert os.path.isfile(out / f"{program}.{'pdmodel' if precision == 'int8' else 'json'}")
        if not is_ppcls:
            with open(out / "deploy.yaml") as f:
                assert yaml.safe_load(f)["Deploy"]["precision"] == precision
        predictor = Predictor(str(out), InferenceSettings(precision=precision, threads=1))
        x = np.random.RandomState(0).rand(*([1] + shape[1:])).astype("float32")
        outputs = predictor.run([x])
        assert predictor.config.mkldnn_enabled() and predictor.quantized == (precision == "int8")
        if precision == "int8":  # convolutions run in int8 (the fusion passes name them fused_conv2d)
            assert predictor.int8_ops.get("fused_conv2d", 0) > 0, predictor.int8_ops
        assert all(np.all(np.isfinite(o)) for o in outputs), precision
