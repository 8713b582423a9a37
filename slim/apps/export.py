"""Export a trained model for Paddle Inference (fp32, or int8 from a QAT checkpoint) and check it against the
dygraph model.

    python tools/export.py --config configs/seg/deeplabv3p_resnet18_vd_nuclei_student.yml \
        --model_path output/seg/distill/best_model/model.pdparams --save_dir output/seg/export
    python tools/export.py -c configs/cls/convnet_student_mnist.yml --quant_config Q.yml \
        --model_path output/cls/qat/best_model/model.pdparams --save_dir output/cls/export_int8

fp32 weights: SAVE_DIR/model.json + model.pdiparams (a PIR program, traced with the ops Paddle Inference's oneDNN
cannot run written in a form it can: slim/quant/export_compat.py). A QAT checkpoint (its config's `quant:`, or
--quant_config Q.yml with the settings it was trained with): SAVE_DIR/model.pdmodel + model.pdiparams, the int8
inference model (quantize/dequantize ops with the trained scales; an old-IR program, the only one Paddle 3.3.1
runs in int8 on CPU). A QAT checkpoint without its quant settings is an error, never a silent fp32 export.
deploy.yaml beside them names the task, the precision and the val transforms.

The checks: the saved model through Paddle Inference against the dygraph model on a few val samples (largest
difference and argmax agreement of each output; an fp32 output beyond tolerance is an error naming it:
export_parity.py), and on the same random --check_shape input (fp32: loaded back with
paddle.jit.load, within --atol of the output's scale max(1, max |dygraph|), and through Paddle Inference with oneDNN,
within 1e-3 of it; int8: Paddle
Inference with the quantize ops in fp32, which is what the dygraph QAT model computes, then oneDNN int8, whose
difference is printed: int8 rounding differs by design; `tools/eval.py --inference_model` measures what it costs).
"""
import glob
import os
import sys

import numpy as np
import paddle
import yaml

from slim.distill.errors import SlimError
from slim.engine.storage import DiskFullError, fault_point, writing
from slim.apps import launch, tools

#: outputs compared by the check are scaled by max(1, max |expected|); this much relative difference is a failure
ONEDNN_RTOL = 1e-3


def first_tensor(out):
    if isinstance(out, (list, tuple)):
        return first_tensor(out[0])
    if isinstance(out, dict):
        return first_tensor(next(iter(out.values())))
    return out


def _as_numpy(value):
    value = first_tensor(value)
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


def _relative_diff(got, expected):
    if got.shape != expected.shape:
        return None
    if not got.size:
        return 0.0  # e.g. a detector finding nothing
    return float(np.abs(got - expected).max()) / max(1.0, float(np.abs(expected).max()))


def _remove_other_format(prefix, keep_ext, log):
    """An export folder holds one program: a stale program of the other precision would be picked up later."""
    for ext in (".json", ".pdmodel"):
        path = prefix + ext
        if ext != keep_ext and os.path.isfile(path):
            os.remove(path)
            log(f"removed {path}, a program of an earlier export of the other precision")


def save_program(layer, prefix, input_spec, log=print):
    """Write the inference program of `layer` (eval mode): int8 (.pdmodel) when it is quantised, else fp32
    (.json); returns the precision ("int8" | "fp32"). Both are traced with slim.quant.export_compat's
    workarounds, so that Paddle Inference runs them with oneDNN. A full disk is one line (storage.py), with the
    partial files removed."""
    layer.eval()
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    try:
        with writing(prefix + ".*", "the exported inference model",
                     hint="The partial export was removed. Free some space or give --save_dir on a larger disk."):
            return _save_program(layer, prefix, input_spec, log)
    except DiskFullError:
        for path in glob.glob(glob.escape(prefix) + ".*"):
            os.remove(path)
        raise


def _save_program(layer, prefix, input_spec, log):
    from slim.quant import is_quantized, save_quantized_inference_model
    from slim.quant.export_compat import deployable_export
    from slim.quant.qat import quant_settings_on
    if is_quantized(layer):
        # the settings quantize_model applied, on the quantised model (the export wrapper holds it)
        settings = next((quant_settings_on(sub) for sub in layer.sublayers(include_self=True)
                         if quant_settings_on(sub) is not None), None)
        if settings is None:
            raise SlimError("The model holds fake-quant layers that slim.quant did not add; quantise it with "
                            "slim.quant.quantize_model (QAT) or tools/ptq.py to export it in int8.")
        with deployable_export():
            save_quantized_inference_model(layer, prefix, input_spec, settings)
        fault_point("export")
        _remove_other_format(prefix, ".pdmodel", log)
        return "int8"
    with deployable_export():
        paddle.jit.save(layer, prefix, input_spec=input_spec)
    fault_point("export")  # SLIM_TEST_ENOSPC=export:1: the disk fills once the files are (partly) written
    _remove_other_format(prefix, ".json", log)
    return "fp32"


def check_input(check_shape):
    return np.random.RandomState(0).randn(*check_shape).astype("float32")


def dygraph_output(layer, x):
    """The dygraph output the export is checked against: taken before saving (saving a quantised model converts
    its forward to a static function in place)."""
    layer.eval()
    with paddle.no_grad():
        return _as_numpy(layer(paddle.to_tensor(x)))


def check_export(prefix, precision, x, expected, atol, threads=1, log=print):
    """Compare the saved program with the dygraph output `expected` on input `x` (see the module docstring)."""
    from slim.quant.inference import InferenceSettings, Predictor
    check_shape = list(x.shape)
    lines = []
    if precision == "fp32":
        loaded = paddle.jit.load(prefix)
        loaded.eval()
        got = _as_numpy(loaded(paddle.to_tensor(x)))
        if got.shape != expected.shape:
            raise SlimError(f"the exported model returns shape {list(got.shape)}, the dygraph model "
                            f"{list(expected.shape)}")
        diff = float(np.abs(got - expected).max()) if got.size else 0.0
        rel = _relative_diff(got, expected)
        lines.append(f"max |saved - dygraph| on a {check_shape} input = {diff:.3g} ({rel:.3g} of max(1, max |dygraph|))")
        if atol is not None and rel > atol:
            raise SlimError(f"the exported model differs from the dygraph model by {diff:.3g}, {rel:.3g} of the "
                            f"output's scale (> --atol {atol})")
    runs = [("fp32", "Paddle Inference, oneDNN fp32")] if precision == "fp32" else \
        [("fp32", "Paddle Inference, quantize ops in fp32"), ("int8", "Paddle Inference, oneDNN int8")]
    for run_precision, what in runs:
        predictor = Predictor(os.path.dirname(prefix) or ".", InferenceSettings(precision=run_precision,
                                                                                threads=threads))
        got = predictor.run([x])[0]
        if not np.all(np.isfinite(got)):
            raise SlimError(f"{what}: the exported model returns non-finite values on a {check_shape} input")
        rel = _relative_diff(got, expected)
        if rel is None:
            lines.append(f"{what}: ran, output shape {list(got.shape)} (dygraph {list(expected.shape)}, not compared)")
            continue
        if predictor.int8_ops is not None:
            what += f" ({sum(predictor.int8_ops.values())} ops in int8)"
        lines.append(f"{what}: max |inference - dygraph| / max(1, max |dygraph|) = {rel:.3g}")
        if run_precision == "fp32" and precision == "fp32" and rel > ONEDNN_RTOL:
            raise SlimError(f"{what} differs from the dygraph model by {rel:.3g} of the output's scale "
                            f"(> {ONEDNN_RTOL})")
    for line in lines:
        log(line)
    return lines


def write_deploy_yaml(save_dir, task, cfg, precision, model="model"):
    with open(os.path.join(save_dir, "deploy.yaml"), "w") as f:
        yaml.safe_dump({"Deploy": {"model": model, "task": task.name, "precision": precision,
                                   "transforms": (cfg.get("val_dataset") or {}).get("transforms")}}, f,
                       sort_keys=False)


def export_model(task, cfg, model, save_dir, input_shape=None, check_shape=(1, 3, 256, 256), atol=1e-4,
                 name="model", log=print):
    """Export `model` (fp32, or int8 when quantised) to SAVE_DIR/NAME.*, check it; returns (prefix, precision)."""
    from slim.apps.export_parity import check_parity, describe_exported, dygraph_outputs
    layer = task.export_model(model, cfg)
    x = check_input(list(input_shape or check_shape))
    expected = dygraph_output(layer, x)
    specs = task.export_input_spec(cfg, input_shape)
    samples = dygraph_outputs(layer, task, cfg, specs)  # val samples, before saving (export_parity.py)
    prefix = os.path.join(save_dir, name)
    precision = save_program(layer, prefix, specs, log=log)
    log(f"exported {'the int8' if precision == 'int8' else 'the fp32'} inference model to {prefix}."
        f"{'pdmodel' if precision == 'int8' else 'json'} (+ .pdiparams): {describe_exported(model, layer)}")
    check_export(prefix, precision, x, expected, atol, log=log)
    check_parity(os.path.dirname(prefix) or ".", precision, samples, task, cfg, log=log)
    return prefix, precision


def main(argv=None):
    # PaddleClas configs (Arch: + Global:) run with PaddleClas's command line: slim/apps/ppcls.py
    from slim.apps import ppcls as ppcls_cli
    if ppcls_cli.wants(argv):
        return ppcls_cli.export_main(argv)
    p = launch.make_parser(__doc__)
    tools.add_model_flags(p)
    p.add_argument("--save_dir", default="output/export")
    p.add_argument("--input_shape", default=None, help="N,C,H,W to fix the input shape (default: dynamic)")
    p.add_argument("--check_shape", default="1,3,256,256", help="input used to compare saved and dygraph models")
    p.add_argument("--atol", type=float, default=1e-4,
                   help="largest |saved - dygraph| / max(1, max |dygraph|) accepted (fp32 exports)")
    args = p.parse_args(argv)
    task, cfg, model = tools.load_model_for_inference(args)
    shape = [int(v) for v in args.input_shape.split(",")] if args.input_shape else None
    check = [int(v) for v in args.check_shape.split(",")]
    os.makedirs(args.save_dir, exist_ok=True)
    _, precision = export_model(task, cfg, model, args.save_dir, shape, check, args.atol)
    write_deploy_yaml(args.save_dir, task, cfg, precision)
    return 0


def cli():
    """The `slim-export` command."""
    sys.exit(launch.run_main(main))


if __name__ == "__main__":
    cli()
