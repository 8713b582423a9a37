"""PaddleSeg's auto-compression (ACT) configs, read as QAT with distillation from the model's fp32 self.

    python tools/act.py --act_config_path configs/seg/act/deeplabv3p_resnet18_vd_nuclei_qat.yaml \
        --config_path configs/seg/deeplabv3p_resnet18_vd_nuclei_student.yml \
        --model_path output/student/best_model/model.pdparams --save_dir output/act

PaddleSlim's ACT (deploy/slim/act/run_seg.py) compresses an exported static model; on Paddle 3.3.1 it does not
run (a PIR model: ValueError in name_analysis; the old program format: a segfault). Here the model is the
dygraph model of --config_path with the dygraph weights of --model_path, and the yaml's sections mean:

    Distillation:   alpha (float or one per node), loss (l2 | soft_label, or one per node), node: ACT's static
                    variable names (conv2d_94.tmp_0). A name that is a sublayer of the dygraph model
                    (`head.cls`) is used as it is; a static name cannot be resolved in a dygraph model, so those
                    terms compare the model's output (its logits) instead, and the log says so. l2 is the mean
                    of squared differences (PaddleSlim's l2); soft_label the soft-label cross-entropy over the
                    classes (PaddleSlim's static soft_label applies its softmax along the last axis, the width of
                    a segmentation map; the class axis is used here).
    QuantAware:     quantize_op_types (conv2d, depthwise_conv2d -> Conv2D layers; mul, matmul, matmul_v2 ->
                    Linear; conv2d_transpose -> Conv2DTranspose), weight_bits, activation_bits, onnx_format,
                    use_pact, weight/activation_quantize_type, dtype, window_size, moving_rate (slim/quant/qat.py)
    TrainConfig:    epochs or train_iter, eval_iter (evaluation and checkpoint interval), learning_rate (a
                    number: constant; or {type: <paddle.optimizer.lr class>, ...}), optimizer_builder
                    ({optimizer: {type: SGD, ...}, weight_decay, grad_clip}), logging_iter
    Global:         model_dir, model_filename, params_filename, ... name the static model ACT reads: not used

As in ACT, the loss is the distillation alone (alpha x loss per node: ACT feeds images without labels); the
teacher is a frozen fp32 copy of the model. Keys this package does not use are listed in the log.
"""
import copy
import os

from slim.distill.config import parse_yaml_with_bases
from slim.distill.errors import ConfigError
from .qat import quant_settings
from .training import layer_ref_spec

SECTIONS = ("Global", "Distillation", "QuantAware", "TrainConfig")
#: ACT strategies that are not QAT with distillation
OTHER_STRATEGIES = ("QuantPost", "ChannelPrune", "ASPPrune", "TransformerPrune", "UnstructurePrune",
                    "HyperParameterOptimization", "MultiTeacherDistillation")
#: static op types -> the dygraph layer types Paddle's QAT wraps
OP_LAYERS = {"conv2d": "Conv2D", "depthwise_conv2d": "Conv2D", "conv2d_transpose": "Conv2DTranspose",
             "mul": "Linear", "matmul": "Linear", "matmul_v2": "Linear"}
QUANT_KEYS = ("weight_bits", "activation_bits", "onnx_format", "use_pact", "weight_quantize_type",
              "activation_quantize_type", "dtype", "window_size", "moving_rate")
LOSSES = {"l2": {"type": "L2Loss"}, "soft_label": {"type": "DistillCrossEntropyLoss"}}
TRAIN_KEYS = ("epochs", "train_iter", "eval_iter", "learning_rate", "optimizer_builder", "logging_iter")


class ActPlan:
    """What an ACT yaml asks for: `quant` (the quant: section), `nodes` [(node, loss cfg, weight)], `train`
    (the student config's training keys), `eval_iter`, `log_iters`, and `notes` (log lines)."""

    def __init__(self):
        self.quant, self.nodes, self.train, self.notes = {}, [], {}, []
        self.eval_iter, self.log_iters = None, None


def _as_list(value, n, what, path):
    values = list(value) if isinstance(value, (list, tuple)) else [value] * n
    if len(values) != n:
        raise ConfigError(f"{path}: Distillation.{what} has {len(values)} entries for {n} node group(s); give one, or "
                          f"one per group.")
    return values


def _distillation(sec, path, plan):
    nodes = sec.get("node") or []
    if isinstance(nodes, str):
        nodes = [nodes]
    if not nodes:
        raise ConfigError(f"{path}: Distillation.node lists nothing; give the tensor(s) to distil (a layer name of "
                          f"the dygraph model, or ACT's static name: the model's output is then used).")
    groups = nodes if isinstance(nodes[0], (list, tuple)) else [nodes]
    losses = _as_list(sec.get("loss", "l2"), len(groups), "loss", path)
    alphas = _as_list(sec.get("alpha", 1.0), len(groups), "alpha", path)
    for group, loss, alpha in zip(groups, losses, alphas):
        if loss not in LOSSES:
            raise ConfigError(f"{path}: Distillation.loss {loss!r} is not supported; use l2 or soft_label.")
        try:
            weight = float(alpha)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: Distillation.alpha must be a number, got {alpha!r}.") from None
        for node in group:
            plan.nodes.append((str(node), dict(LOSSES[loss]), weight))
    unused = sorted(set(sec) - {"node", "loss", "alpha"})
    if unused:
        plan.notes.append(f"ACT config {path}: Distillation.{', Distillation.'.join(unused)} not used")


def _quant(sec, path, plan):
    types = sec.get("quantize_op_types")
    quant = {k: sec[k] for k in QUANT_KEYS if k in sec}
    if types is not None:
        types = [types] if isinstance(types, str) else list(types)
        layers = list(dict.fromkeys(OP_LAYERS[t] for t in types if t in OP_LAYERS))
        skipped = [t for t in types if t not in OP_LAYERS]
        if not layers:
            raise ConfigError(f"{path}: QuantAware.quantize_op_types {types} names no op that dygraph QAT quantises; "
                              f"use conv2d, depthwise_conv2d, conv2d_transpose, mul, matmul or matmul_v2.")
        if skipped:
            plan.notes.append(f"ACT config {path}: QuantAware.quantize_op_types {skipped} are not quantised here "
                              f"(dygraph QAT wraps Conv2D, Conv2DTranspose and Linear layers)")
        quant["quantizable_layer_type"] = layers
    else:
        quant["quantizable_layer_type"] = ["Conv2D", "Conv2DTranspose", "Linear"]  # ACT's default op list
    unused = sorted(set(sec) - set(QUANT_KEYS) - {"quantize_op_types"})
    if unused:
        plan.notes.append(f"ACT config {path}: QuantAware.{', QuantAware.'.join(unused)} not used")
    quant_settings(quant, f"{path}: QuantAware")  # its errors name the file
    plan.quant = quant


def _learning_rate(value, path):
    if isinstance(value, dict):
        lr = {k: v for k, v in value.items() if k != "type"}
        kind = value.get("type")
        if not kind:
            raise ConfigError(f"{path}: TrainConfig.learning_rate as a mapping needs `type:` (a paddle.optimizer.lr "
                              f"class, e.g. CosineAnnealingDecay), got {value!r}.")
        if kind == "PiecewiseDecay" and "learning_rate" not in lr and lr.get("values"):
            lr["learning_rate"] = lr["values"][0]
        return {"lr_scheduler": dict(lr, type=kind)}
    try:
        return {"lr_scheduler": {"type": "Constant", "learning_rate": float(value)}}
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: TrainConfig.learning_rate must be a number or a schedule mapping, got "
                          f"{value!r}.") from None


def _optimizer(builder, path, plan):
    if not isinstance(builder, dict):
        raise ConfigError(f"{path}: TrainConfig.optimizer_builder must be a mapping such as {{optimizer: {{type: SGD}}, "
                          f"weight_decay: 4.0e-05}}, got {builder!r}.")
    opt = dict(builder.get("optimizer") or {"type": "SGD"})
    if "type" not in opt:
        raise ConfigError(f"{path}: TrainConfig.optimizer_builder.optimizer needs `type:` (SGD, Momentum, Adam, ...).")
    if builder.get("weight_decay") is not None:
        opt["weight_decay"] = float(builder["weight_decay"])
    reg = builder.get("regularizer")
    if isinstance(reg, dict) and reg.get("coeff") is not None:
        opt["weight_decay"] = float(reg["coeff"])
    clip = builder.get("grad_clip")
    if isinstance(clip, dict):
        opt["grad_clip_cfg"] = dict({k: v for k, v in clip.items() if k != "type"}, name=clip.get("type"))
    unused = sorted(set(builder) - {"optimizer", "weight_decay", "regularizer", "grad_clip"})
    if unused:
        plan.notes.append(f"ACT config {path}: TrainConfig.optimizer_builder.{', '.join(unused)} not used")
    return opt


def _train(sec, path, plan):
    train = {}
    epochs, iters = sec.get("epochs"), sec.get("train_iter")
    if epochs and iters:
        raise ConfigError(f"{path}: TrainConfig sets both epochs ({epochs}) and train_iter ({iters}); keep one.")
    if epochs:
        train.update(epochs=int(epochs), iters=None)
    elif iters:
        train.update(iters=int(iters), epochs=None)
    if "learning_rate" in sec:
        train.update(_learning_rate(sec["learning_rate"], path))
    if "optimizer_builder" in sec:
        train["optimizer"] = _optimizer(sec["optimizer_builder"], path, plan)
    if sec.get("eval_iter"):
        plan.eval_iter = int(sec["eval_iter"])
    if sec.get("logging_iter"):
        plan.log_iters = int(sec["logging_iter"])
    unused = sorted(set(sec) - set(TRAIN_KEYS))
    if unused:
        plan.notes.append(f"ACT config {path}: TrainConfig.{', TrainConfig.'.join(unused)} not used")
    plan.train = train


def read_act_config(path) -> ActPlan:
    """An ACT yaml (PaddleSeg's deploy/slim/act/configs shape) -> ActPlan; errors name the key."""
    if not path or not os.path.isfile(path):
        raise ConfigError(f"--act_config_path {path!r} not found; give an ACT yaml (Distillation, QuantAware, "
                          f"TrainConfig, Global).")
    raw = parse_yaml_with_bases(path)
    other = [k for k in OTHER_STRATEGIES if k in raw]
    if other:
        hint = " (post-training quantisation: tools/ptq.py)" if "QuantPost" in other else ""
        raise ConfigError(f"{path}: ACT strategy {', '.join(other)} is not supported here{hint}; this command runs "
                          f"QuantAware with Distillation.")
    if not isinstance(raw.get("QuantAware"), dict):
        raise ConfigError(f"{path}: no QuantAware section; ACT here is quantisation-aware training (QuantAware) "
                          f"with Distillation from the fp32 model.")
    plan = ActPlan()
    for name in ("Distillation", "TrainConfig"):
        if raw.get(name) is not None and not isinstance(raw.get(name), dict):
            raise ConfigError(f"{path}: {name} must be a mapping, got {raw.get(name)!r}.")
    _quant(raw["QuantAware"], path, plan)
    _distillation(raw.get("Distillation") or {"node": ["$output"], "loss": "l2", "alpha": 1.0}, path, plan)
    if raw.get("Distillation") is None:
        plan.notes.append(f"ACT config {path}: no Distillation section: l2 on the model's output, alpha 1 (ACT's "
                          f"default distils the output too)")
    _train(raw.get("TrainConfig") or {}, path, plan)
    glob = raw.get("Global") or {}
    if glob:
        plan.notes.append(f"ACT config {path}: Global.{', Global.'.join(sorted(glob))} not used (the model is the "
                          f"dygraph model of --config_path with the weights of --model_path)")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        plan.notes.append(f"ACT config {path}: {', '.join(unknown)} not used")
    return plan


def resolve_pairs(plan: ActPlan, model, logits_ref):
    """The distillation pairs (yaml `distill:` dicts) of the plan's nodes on `model`: a node naming a sublayer
    is used as it is; any other name (a static variable name) falls back to the model's output, once."""
    layers = {name for name, _ in model.named_sublayers()}
    pairs, notes, fallback = [], [], []
    for node, loss, weight in plan.nodes:
        if node in layers or node == "$output":
            ref = node
        else:
            fallback.append(node)
            ref = None
        key = node if ref is not None else "$output-fallback"
        if any(p["_key"] == key and p["loss"] == loss for p in pairs):
            continue
        spec = layer_ref_spec(logits_ref) if ref is None else ref
        name = f"act_{loss['type'].replace('Loss', '').lower()}_{'output' if ref is None else node.replace('.', '_')}"
        pairs.append({"_key": key, "name": name, "student": spec, "teacher": copy.deepcopy(spec), "loss": loss,
                      "weight": weight})
    if fallback:
        notes.append(f"ACT Distillation.node {', '.join(fallback)}: static-graph variable name(s) that the dygraph "
                     f"model has no layer for; distilling the model's output ({logits_ref.describe()}) instead")
    for p in pairs:
        p.pop("_key")
    return pairs, notes

