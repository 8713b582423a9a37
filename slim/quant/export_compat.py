"""Exports Paddle Inference runs with oneDNN on CPU: two Paddle 3.3.1 bugs worked around while a model is traced.

1. fp32 exports (PIR programs, `model.json`). Paddle 3.3.1's oneDNN executor cannot read the `scale` attribute of
   the resize ops (a list of doubles): the first run of any exported model holding `bilinear_interp`,
   `nearest_interp`, `linear_interp` or `trilinear_interp` (every PaddleSeg model; ppdet's YOLOv3 neck) under
   `config.enable_mkldnn()` stops with `ConvertPirAttribute2RuntimeAttribute not support
   [pir::ArrayAttribute<pir::DoubleAttribute>]` (Paddle #79749, PaddleOCR #17869), whatever the attribute holds,
   even an empty list. oneDNN is Paddle Inference's default on CPU. Inside `onednn_pir_ops()` these ops are
   traced as the same arithmetic written with other ops, one spatial axis at a time (the resize is separable):
   linear along H and W as a matmul with the interpolation matrix, other axes and nearest with `gather` and
   elementwise ops, with the source indices and weights computed as Paddle's CPU kernel computes them
   (paddle/phi/kernels/cpu/interpolate_kernel.cc: the ratio in float32, the half-pixel position in double,
   truncation, clamping). And a convolution followed by `leaky_relu` (ppdet's YOLOv3) crashes Paddle Inference's
   oneDNN fusion passes (a segmentation fault in FusedConv2dOp::Build, when the predictor is created; no upstream
   issue found): it is traced as max(x, slope * x). The exported model equals the dygraph model
   (tests/test_deploy_onednn.py).

2. int8 exports (old-IR programs, `model.pdmodel`). CPU int8 runs only through the old-IR inference passes
   (cpu_quantize_pass; the PIR passes drop the quantize ops), Paddle's fake-quant layers trace only into old-IR
   programs, and `save_quantized_model` traces under `OldIrGuard`. But in Paddle 3.3.1 several public APIs are
   the C++ functions of `_C_ops`, which take dygraph tensors and PIR values only: `paddle.multiply` in the SE
   blocks of MobileNetV3 (PaddleSeg, PaddleClas), `F.sigmoid`, ... stop an old-IR trace with
   `TypeError: multiply(): argument (position 1) must be Value, but got Variable`. Inside `legacy_static_apis()`
   these functions append the old op of the same computation (`elementwise_mul`, `sigmoid`, ...) when given
   old-IR variables, and run as before otherwise.

    from slim.quant.export_compat import deployable_export
    with deployable_export():
        paddle.jit.save(layer, "out/model", input_spec=[paddle.static.InputSpec([None, 3, None, None])])

The replacements apply only while a program is traced; dygraph calls inside the blocks run Paddle's own kernels.
`bicubic_interp` is left as it is (no model here uses it).
"""
import contextlib

import paddle
from paddle import _C_ops

#: the ops that are replaced in PIR traces, by their `_C_ops` name
REPLACED_OPS = ("linear_interp", "bilinear_interp", "trilinear_interp", "nearest_interp", "leaky_relu")


def _spatial_axes(ndim, data_format):
    """The spatial axes of an (N, C, *spatial) or (N, *spatial, C) tensor."""
    channels_last = str(data_format).upper() in ("NHWC", "NDHWC", "NWC")
    return list(range(1, ndim - 1)) if channels_last else list(range(2, ndim))


def _as_int64(value):
    if isinstance(value, int):
        return paddle.full([], value, dtype="int64")
    return value.astype("int64").reshape([])


def _output_lengths(x, axes, out_size, size_tensor, scale_tensor, out_dhw, scale):
    """(output length per axis as int64 scalars, scale per axis as a float64 value, or None): the precedence of
    Paddle's kernel: a SizeTensor list, else scale (attr or tensor) then OutSize overriding the lengths."""
    n = len(axes)
    in_len = [paddle.shape(x)[a] for a in axes]
    out_dhw = list(out_dhw)[-n:]
    scales = [None] * n
    if size_tensor:
        return [_as_int64(v) for v in size_tensor], scales
    if scale_tensor is not None:  # one value for every axis, or one per axis
        values = scale_tensor.astype("float64").reshape([-1])
        scales = [values[i] if values.shape[0] == n else values[0] for i in range(n)]
    elif scale:
        values = list(scale) if len(scale) > 1 else [scale[0]] * n
        scales = [paddle.full([], float(v), dtype="float64") for v in values[:n]]
    lengths = [_as_int64(v) for v in out_dhw]
    if scales[0] is not None:
        # static_cast<int>(in * scale); the scale is a double in Paddle 3.3.1 (the attribute oneDNN cannot read)
        lengths = [paddle.floor(in_len[i].astype("float64") * scales[i]).astype("int64") for i in range(n)]
    if out_size is not None:
        sizes = out_size.astype("int64").reshape([-1])
        lengths = [sizes[i] for i in range(n)]
    return lengths, scales


def _f32(value):
    """`value` (float64) rounded to float32's 24-bit significand, still as float64 (Veltkamp's split).

    The index math runs in float64 on plain CPU kernels and rounds where Paddle's kernel holds a float; for +, -,
    *, / of float32 operands this equals the float32 operation (double rounding is innocuous for 53 >= 2 * 24 + 2
    bits). No float32 <-> float64 cast: oneDNN takes float32 casts and, with Paddle's inplace pass, its cast to
    float64 returned zeros here (Paddle 3.3.1)."""
    split = value * float(2 ** 29 + 1)
    return split - (split - value)


def _ratio(in_len, out_len, scale, align_corners):
    """Paddle's float32 source/destination ratio of one axis (as float64); 0 when the output has one element."""
    in_f, out_f = in_len.astype("float64"), out_len.astype("float64")
    if align_corners:
        ratio = _f32((in_f - 1.0) / paddle.maximum(out_f - 1.0, paddle.ones([], "float64")))
    elif scale is not None:
        ratio = _f32(1.0 / scale)
    else:
        ratio = _f32(in_f / out_f)
    return paddle.where(out_len > 1, ratio, paddle.zeros_like(ratio))


def _resize_axis(x, axis, out_len, ratio, method, align_corners, align_mode):
    """Resize `x` along one axis as Paddle's CPU kernel does (linear or nearest); `ratio` float64."""
    in_len = paddle.shape(x)[axis].astype("int64")
    k = paddle.arange(out_len, dtype="int64").astype("float64")
    last = in_len - 1
    if method == "nearest":
        # static_cast<int>(ratio * k) with the product in float32 (+ 0.5 in double with align_corners)
        src = _f32(ratio * k) + (0.5 if align_corners else 0.0)
        index = paddle.minimum(paddle.floor(src).astype("int64"), last)
        return paddle.gather(x, index, axis=axis)
    zero = paddle.zeros([], "float64")
    if align_mode == 0 and not align_corners:
        # half-pixel centres: the position in double, its weight from its float32 value, both clamped at 0
        src = ratio * (k + 0.5) - 0.5
        low = paddle.maximum(paddle.trunc(src), zero)
        weight = paddle.maximum(_f32(src), zero) - low
    else:  # ratio * k in float32
        src = _f32(ratio * k)
        low = paddle.floor(src)
        weight = src - low
    low = paddle.minimum(low.astype("int64"), last)
    high = paddle.minimum(low + 1, last)
    if axis >= len(x.shape) - 2:
        # one of the two last axes (H, W of NCHW): a matmul with the (out, in) interpolation matrix, each row
        # holding 1 - weight at `low` and weight at `high`. The same two products and sum per element as below;
        # oneDNN ran those gathers and broadcast multiplies slowly (bench/quant_gain.py, 1 thread: the fp32
        # DeepLabV3P export 832 ms with them, 517 ms with the matmuls; the seg demo student 113 -> 28 ms). On 3-D
        # operands: oneDNN's matmul of a 4-D tensor produced by a convolution with a broadcast 2-D matrix returned
        # wrong values in DeepLabV3P (Paddle 3.3.1; right when the tensor is a model input)
        columns = paddle.arange(in_len, dtype="int64").reshape([1, -1])
        weight = weight.astype(x.dtype).reshape([-1, 1])
        zeros = paddle.zeros_like(weight)
        matrix = paddle.where(columns == low.reshape([-1, 1]), 1.0 - weight, zeros) + \
            paddle.where(columns == high.reshape([-1, 1]), weight, zeros)
        shape = paddle.shape(x)
        flat = x.reshape([-1, shape[-2], shape[-1]])
        out = paddle.matmul(flat, matrix, transpose_y=True) if axis == len(x.shape) - 1 else paddle.matmul(matrix, flat)
        return out.reshape(paddle.concat([shape[:-2], paddle.shape(out)[1:]]))
    shape = [-1] + [1] * (len(x.shape) - 1 - axis)
    weight = weight.astype(x.dtype).reshape(shape)
    near, far = paddle.gather(x, low, axis=axis), paddle.gather(x, high, axis=axis)
    return near * (1.0 - weight) + far * weight


def resize_like_paddle(x, out_size, size_tensor, scale_tensor, data_format, out_d, out_h, out_w, scale, method,
                       align_corners, align_mode):
    """The arguments of `_C_ops.<method>_interp`; the same result written with gather and elementwise ops."""
    axes = _spatial_axes(len(x.shape), data_format)
    lengths, scales = _output_lengths(x, axes, out_size, size_tensor, scale_tensor, (out_d, out_h, out_w), scale)
    method = "nearest" if method == "nearest" else "linear"
    for axis, out_len, axis_scale in zip(axes, lengths, scales):
        ratio = _ratio(paddle.shape(x)[axis], out_len, axis_scale, align_corners)
        x = _resize_axis(x, axis, out_len, ratio, method, bool(align_corners), int(align_mode))
    return x


def leaky_relu_like_paddle(x, negative_slope=0.01, *args, **kwargs):
    """leaky_relu(x) = x > 0 ? x : slope * x, without the op: max(x, slope * x) for 0 <= slope <= 1."""
    slope = float(negative_slope)
    if 0.0 <= slope <= 1.0:
        return paddle.maximum(x, x * slope)
    return paddle.where(x > 0, x, x * slope)


def _replacement(name, original):
    if name == "leaky_relu":
        def leaky(x, *args, **kwargs):
            if not paddle.framework.in_pir_mode():
                return original(x, *args, **kwargs)
            return leaky_relu_like_paddle(x, *args, **kwargs)
        return leaky

    def op(x, out_size, size_tensor, scale_tensor, data_format, out_d, out_h, out_w, scale, method, align_corners,
           align_mode):
        if not paddle.framework.in_pir_mode():  # dygraph: Paddle's own kernel
            return original(x, out_size, size_tensor, scale_tensor, data_format, out_d, out_h, out_w, scale,
                            method, align_corners, align_mode)
        return resize_like_paddle(x, out_size, size_tensor, scale_tensor, data_format, out_d, out_h, out_w, scale,
                                  method, align_corners, align_mode)
    op.__name__ = name
    return op


@contextlib.contextmanager
def onednn_pir_ops():
    """Inside the block, PIR programs traced for export (paddle.jit.save) hold no *_interp or leaky_relu op."""
    originals = {name: getattr(_C_ops, name) for name in REPLACED_OPS}
    try:
        for name, original in originals.items():
            setattr(_C_ops, name, _replacement(name, original))
        yield
    finally:
        for name, original in originals.items():
            setattr(_C_ops, name, original)


def unsupported_ops_in(program_ops):
    """The ops of `program_ops` (names such as 'pd_op.bilinear_interp') that PIR oneDNN inference cannot run."""
    return sorted({n for n in program_ops if n.split(".")[-1] in REPLACED_OPS})


# ----- old-IR traces of APIs that are PIR/dygraph-only in Paddle 3.3.1 ------------------------------------------
def _is_legacy_variable(value):
    from paddle.base.framework import Variable
    return isinstance(value, Variable) and not paddle.in_dynamic_mode()


def _append(op_type, inputs, attrs=None, dtype=None):
    from paddle.base.layer_helper import LayerHelper
    helper = LayerHelper(op_type)
    first = next(iter(inputs.values()))[0]
    out = helper.create_variable_for_type_inference(dtype or first.dtype)
    helper.append_op(type=op_type, inputs=inputs, outputs={"Out": [out]}, attrs=attrs or {})
    return out


def _unary(op_type):
    return lambda x, *args, **kwargs: _append(op_type, {"X": [x]})


def _binary(op_type):
    return lambda x, y, *args, **kwargs: _append(op_type, {"X": [x], "Y": [y]}, {"axis": -1})


#: `_C_ops` name -> the old-IR op appended for old-IR variables (the ones met tracing this package's models)
LEGACY_OPS = {
    "multiply": _binary("elementwise_mul"),
    "add": _binary("elementwise_add"),
    "subtract": _binary("elementwise_sub"),
    "divide": _binary("elementwise_div"),
    "maximum": _binary("elementwise_max"),
    "minimum": _binary("elementwise_min"),
    "sigmoid": _unary("sigmoid"),
    "tanh": _unary("tanh"),
    "exp": _unary("exp"),
    "sqrt": _unary("sqrt"),
    "abs": _unary("abs"),
    "floor": _unary("floor"),
    "relu": _unary("relu"),
}


def _legacy_or_original(name, original):
    legacy = LEGACY_OPS[name]

    def op(*args, **kwargs):
        if any(_is_legacy_variable(a) for a in args) or any(_is_legacy_variable(v) for v in kwargs.values()):
            return legacy(*args, **kwargs)
        return original(*args, **kwargs)
    op.__name__ = name
    return op


def _bound_elsewhere(originals):
    """(module, attribute name) of every `paddle*` module attribute that is one of the `_C_ops` functions
    (`paddle.multiply` is `_C_ops.multiply` itself, bound at import)."""
    import sys
    targets = {id(f): n for n, f in originals.items()}
    found = []
    for mod_name, module in list(sys.modules.items()):
        if module is None or not mod_name.startswith("paddle") or module is _C_ops:
            continue
        for attr, value in list(getattr(module, "__dict__", {}).items()):
            if id(value) in targets and value is originals[targets[id(value)]]:
                found.append((module, attr, targets[id(value)]))
    return found


@contextlib.contextmanager
def legacy_static_apis():
    """Inside the block, old-IR traces (`OldIrGuard`, e.g. the int8 export) of the APIs in LEGACY_OPS append
    their old ops instead of failing."""
    originals = {name: getattr(_C_ops, name) for name in LEGACY_OPS}
    elsewhere = _bound_elsewhere(originals)
    wrapped = {name: _legacy_or_original(name, f) for name, f in originals.items()}
    try:
        for name, f in wrapped.items():
            setattr(_C_ops, name, f)
        for module, attr, name in elsewhere:
            setattr(module, attr, wrapped[name])
        yield
    finally:
        for name, f in originals.items():
            setattr(_C_ops, name, f)
        for module, attr, name in elsewhere:
            setattr(module, attr, originals[name])


@contextlib.contextmanager
def deployable_export():
    """Both workarounds: PIR traces resize without *_interp ops, old-IR traces accept the PIR-only APIs."""
    with onednn_pir_ops(), legacy_static_apis():
        yield
