"""Quantisation: quantisation-aware training of students (qat.py) and self-distillation for it; the int8
inference models Paddle Inference runs.

    from slim.quant import quant_settings, quantize_model, save_quantized_inference_model
    settings = quant_settings({"weight_quantize_type": "channel_wise_abs_max", "use_pact": True})
    model = quantize_model(model, settings)          # after its fp32 weights are loaded; then train
    save_quantized_inference_model(model, "out/model", [paddle.static.InputSpec([None, 3, 224, 224])], settings)

The training commands read a config's `quant:` section or `--quant_config Q.yml` (slim/apps/launch.py).
"""
from .qat import (QUANT_FLAG, QuantSettings, is_quantized, quant_settings, quant_settings_of, quantize_model,
                  save_quantized_inference_model, state_is_quantized, weights_order)

__all__ = ["QUANT_FLAG", "QuantSettings", "is_quantized", "quant_settings", "quant_settings_of", "quantize_model",
           "save_quantized_inference_model", "state_is_quantized", "weights_order"]
