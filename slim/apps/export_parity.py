"""Export parity on real data: the exported model through Paddle Inference against the dygraph model on a few val
samples (tools/export.py runs it after every export, every config family).

    samples = dygraph_outputs(layer, task, cfg, task.export_input_spec(cfg))    # before saving
    rows = check_parity("output/export", "fp32", samples, task, cfg)         # SlimError when an output differs

For each output of the exported program: the largest |inference - dygraph|, that difference relative to the
output's scale max(1, max |dygraph|), and, for class scores (axis 1 as long as the model's class count), how often
the two pick the same class (argmax, per sample or per pixel). An fp32 export whose output differs by more than
PARITY_RTOL of its scale, or picks another class for more than 1 - PARITY_AGREEMENT of the entries, is an error
naming the output. An int8 export is compared and reported (int8 rounding differs by design; `tools/eval.py
--inference_model` measures what it costs on the whole val set).
"""
import numpy as np
import paddle

from slim.distill.errors import ConfigError, SlimError
from slim.engine.check_teacher import SampleSubset

PARITY_SAMPLES = 4
PARITY_RTOL = 1e-3
PARITY_AGREEMENT = 0.999


def _tensors(out):
    """The dygraph output as a flat list of numpy arrays, in the order the exported program returns them."""
    if isinstance(out, (list, tuple)):
        return [a for item in out for a in _tensors(item)]
    if isinstance(out, dict):
        return [a for item in out.values() for a in _tensors(item)]
    return [out.numpy() if hasattr(out, "numpy") else np.asarray(out)]


def val_inputs(task, cfg, input_specs, count=PARITY_SAMPLES):
    """[(sample index, [input arrays in the export's order])] of `count` val samples spread over the val set, each a
    batch of one through the config's val pipeline."""
    dataset = SampleSubset(task.build_dataset(cfg, "val"), count)
    collate = task.collate_fn("val")
    names = [spec.name for spec in input_specs]
    out = []
    for i in range(len(dataset)):
        batch = collate([dataset[i]]) if collate else dataset[i]
        args, kwargs = task.model_inputs(batch, "val")
        if args and isinstance(args[0], dict):  # e.g. ppdet's {image, im_shape, scale_factor}
            values = [args[0][n] for n in names]
        else:
            values = [a for a in args if isinstance(a, paddle.Tensor)][:len(names)]
        out.append((dataset.indices[i], [v.numpy() for v in values]))
    return out


def _fits(arrays, input_specs):
    for array, spec in zip(arrays, input_specs):
        shape = list(spec.shape)
        if len(shape) != array.ndim or any(s not in (None, -1) and int(s) != d for s, d in zip(shape, array.shape)):
            return False
    return True


def compare(expected, got, classes):
    """One output of one sample: (max |difference|, difference / max(1, max |expected|), argmax agreement or None),
    or None when the shapes differ (e.g. a detector keeping another number of boxes)."""
    if expected.shape != got.shape:
        return None
    if not expected.size:
        return 0.0, 0.0, None
    diff = float(np.abs(got.astype("float64") - expected.astype("float64")).max())
    rel = diff / max(1.0, float(np.abs(expected).max()))
    agree = None
    if classes and expected.ndim >= 2 and expected.shape[1] == classes and expected.dtype.kind == "f":
        agree = float((expected.argmax(axis=1) == got.argmax(axis=1)).mean())
    return diff, rel, agree


def dygraph_outputs(layer, task, cfg, input_specs, count=PARITY_SAMPLES):
    """[(inputs, dygraph outputs)] of the val samples the export can take, computed before saving (saving a
    quantised model turns its forward into a static function); a sentence saying why when there are none."""
    layer.eval()
    out = []
    try:
        inputs = val_inputs(task, cfg, input_specs, count)
    except ConfigError as e:  # no val data on this machine: the random-input check still runs
        return f"no val samples ({str(e).splitlines()[0]})"
    for _, xs in inputs:
        if _fits(xs, input_specs):
            with paddle.no_grad():
                out.append((xs, _tensors(layer(*[paddle.to_tensor(x) for x in xs]))))
    return out


def check_parity(export_dir, precision, samples, task, cfg, log=print, threads=1):
    """Run the export in `export_dir` on `samples` (dygraph_outputs); log one line per output; raise SlimError for an
    fp32 output beyond PARITY_RTOL or below PARITY_AGREEMENT. Returns the rows."""
    from slim.quant.inference import InferenceSettings, Predictor
    if isinstance(samples, str) or not samples:
        why = samples if isinstance(samples, str) else "the export's fixed input shape fits none of the val samples"
        log(f"export parity on val samples: skipped ({why})")
        return []
    classes = task.num_classes(cfg) or (task.class_count(cfg) if hasattr(task, "class_count") else None)
    predictor = Predictor(export_dir, InferenceSettings(precision=precision, threads=threads))
    stats = {}
    for xs, expected in samples:
        got = predictor.run(xs)
        for k, (e, g) in enumerate(zip(expected, got)):
            stats.setdefault(k, []).append(compare(e, g, int(classes) if classes else None))
    rows = []
    for k, values in stats.items():
        name = predictor.output_names[k] if k < len(predictor.output_names) else str(k)
        compared = [v for v in values if v is not None]
        row = {"output": f"output {k} ({name})", "samples": len(values), "compared": len(compared),
               "max_abs_diff": max((v[0] for v in compared), default=None),
               "max_rel_diff": max((v[1] for v in compared), default=None)}
        agreements = [v[2] for v in compared if v[2] is not None]
        row["argmax_agreement"] = float(np.mean(agreements)) if agreements else None
        rows.append(row)
        text = (f"export parity, {row['output']} on {len(values)} val sample(s) (Paddle Inference "
                f"{predictor.settings.describe()} vs dygraph): ")
        if not compared:
            log(text + "shapes differ from the dygraph output's on every sample, not compared")
            continue
        text += f"max |difference| {row['max_abs_diff']:.3g} ({row['max_rel_diff']:.3g} of max(1, max |dygraph|))"
        if row["argmax_agreement"] is not None:
            text += f", argmax agreement {row['argmax_agreement']:.2%}"
        if len(compared) < len(values):
            text += f" ({len(values) - len(compared)} sample(s) with another shape, not compared)"
        log(text)
        if precision != "fp32":
            continue
        if row["max_rel_diff"] > PARITY_RTOL or (row["argmax_agreement"] is not None
                                                 and row["argmax_agreement"] < PARITY_AGREEMENT):
            raise SlimError(f"The exported model's {row['output']} differs from the dygraph model's on val samples: "
                            f"max |difference| {row['max_abs_diff']:.3g} ({row['max_rel_diff']:.3g} of its scale, "
                            f"tolerance {PARITY_RTOL:g})"
                            + (f", argmax agreement {row['argmax_agreement']:.2%} (needed {PARITY_AGREEMENT:.1%})"
                               if row["argmax_agreement"] is not None else "")
                            + f". The files in {export_dir} do not compute what the checkpoint does: export again "
                              f"(a damaged or replaced .pdiparams, or a model whose forward differs in eval mode).")
    return rows


def describe_exported(model, layer):
    """What was exported and its size, e.g. 'Student (MobileNetV3_small_x0_35) of a DistillationModel, 0.31M
    parameters' or 'the student Classifier, 2,210 parameters'."""
    total = sum(int(p.size) for p in layer.parameters())
    infer = getattr(model, "infer_model_name", None)
    inner = getattr(layer, "model", layer)  # task export wrappers (SegLogits, ClsExport, DetExport) hold the model
    if infer is not None:
        what = f"{infer} ({type(inner).__name__}) of the {type(model).__name__}; the other models are not exported"
    else:
        what = f"{type(inner).__name__}"
    return f"{what}, {total:,} parameters"
