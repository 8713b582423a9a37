"""Parameter and multiply-accumulate counts of a model, from one forward with hooks (any input type)."""
import paddle.nn as nn

from slim.distill.adaptor import unwrap
from slim.distill.layers import forward_with_hooks


def count_parameters(model):
    params = list(unwrap(model).parameters())
    total = sum(int(p.size) for p in params)
    trainable = sum(int(p.size) for p in params if not p.stop_gradient)
    return total, trainable


def count_macs(model, *inputs, **kwargs):
    """Multiply-accumulates of the convolutions and linear layers in one eval-mode forward."""
    model = unwrap(model)
    total = [0]
    handles = []

    def conv_hook(layer, inp, out):
        weight = layer.weight  # (out_c, in_c / groups, *kernel): each output element costs in_c/groups*kernel
        total[0] += int(out.size) * int(weight.size) // int(weight.shape[0])

    def linear_hook(layer, inp, out):
        total[0] += int(out.size) * int(layer.weight.shape[0])

    for layer in model.sublayers():
        if isinstance(layer, (nn.Conv2D, nn.Conv1D)):
            handles.append(layer.register_forward_post_hook(conv_hook))
        elif isinstance(layer, nn.Linear):
            handles.append(layer.register_forward_post_hook(linear_hook))
    forward_with_hooks(model, handles, *inputs, **kwargs)
    return total[0]


def describe_model(name, model, inputs=None, kwargs=None):
    total, trainable = count_parameters(model)
    text = f"{name}: {type(unwrap(model)).__name__}, {total / 1e6:.2f}M parameters ({trainable / 1e6:.2f}M trainable)"
    if inputs is not None:
        try:
            macs = count_macs(model, *inputs, **(kwargs or {}))
            text += f", {macs / 1e9:.2f} GMACs per forward of the example input"
        except Exception as e:  # counting is informative only; never stop training for it
            text += f" (MACs not counted: {type(e).__name__})"
    return text
