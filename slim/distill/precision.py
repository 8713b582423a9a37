"""Losses in fp32 under mixed precision.

Under `paddle.amp.auto_cast` the models (and connectors) produce float16 or bfloat16 tensors; a softmax, a
KL divergence or a normalisation computed in float16 overflows easily (exp(12) is beyond its range). Every
loss therefore gets its inputs cast to float32 (`float32`) and runs with autocast switched off
(`float32_losses`). Without autocast both are no-ops: fp32 runs are unchanged.
"""
import contextlib

import paddle

LOW_PRECISION = (paddle.float16, paddle.bfloat16)


def float32(value):
    """`value` with every float16/bfloat16 tensor in it (lists, tuples and dicts are walked) cast to float32;
    the same object when there is nothing to cast."""
    if isinstance(value, paddle.Tensor):
        return value.astype("float32") if value.dtype in LOW_PRECISION else value
    if isinstance(value, (list, tuple)):
        items = [float32(v) for v in value]
        if all(a is b for a, b in zip(items, value)):
            return value
        return type(value)(items) if not hasattr(value, "_fields") else type(value)(*items)
    if isinstance(value, dict):
        items = {k: float32(v) for k, v in value.items()}
        if all(items[k] is v for k, v in value.items()):
            return value
        out = type(value)() if type(value) is not dict else {}
        out.update(items)
        return out
    return value


def float32_losses():
    """A context in which autocast is off (when it was on): what runs inside computes in float32."""
    if not paddle.is_autocast_enabled():
        return contextlib.nullcontext()
    return paddle.amp.auto_cast(enable=False, dtype=paddle.get_autocast_dtype())
