"""Suggest distillation pairs for a student and a teacher config (`tools/list_layers.py --suggest`).

Both models run once on the task's example input. Their sublayers are grouped into stages by output
resolution (the stride of the output relative to the input) and pairs are proposed:

- the logits (what the task's `logits_ref` names in the model output), with KLLoss, unless the student
  config's `distill_loss` already compares them or the output is not a class-score tensor (a detector's
  boxes or loss dict);
- for each stage present in both models, shallow to deep, the last layer to finish in that stage: a
  single (N, C, H, W) map of a layer with weights (activations, normalisation, dropout, pooling, 1x1
  maps, class-score maps and layers run more than once are skipped; strides below 4, the stem, too).
  For a detector these are the head's output maps where the head predicts at that stride.
  A transformer's (N, L, D) tokens count as a map of their patch grid (ViT: every block at the patch
  size's stride; Swin: each stage's blocks, before its patch merging): the pair converts them with
  `tokens_to_map` (slim/distill/tokens.py), so a ViT pairs with a CNN at the stride they share.

Feature pairs get a feature loss (SegChannelwiseLoss for segmentation, L2Loss otherwise), a 1x1conv
connector when the channels differ and `resize` when H, W differ.

    pairs = suggest_pairs(s_task, s_cfg, t_task, t_cfg, log=print)
    print(render_pairs(pairs))
"""
import itertools
import math
import sys

import paddle
import yaml

from slim.distill.adaptor import select
from slim.distill.errors import ConfigError, SlimError
from slim.distill.layers import forward_with_hooks
from slim.distill.pairs import parse_pairs
from slim.distill.tokens import token_grid

#: the smallest stride paired: stride-2 stems hold edge-like features with little to transfer
MIN_STRIDE = 4
#: layers that are never pairs: normalisation, activations, dropout, pooling, reshaping
_SKIP_TYPES = {
    "ReLU", "ReLU6", "LeakyReLU", "PReLU", "RReLU", "ELU", "CELU", "SELU", "GELU", "Sigmoid", "Hardsigmoid",
    "Hardswish", "Swish", "Silu", "Mish", "Tanh", "Hardtanh", "Softmax", "LogSoftmax", "Softplus", "Activation",
    "Dropout", "Dropout2D", "Dropout3D", "AlphaDropout", "DropBlock", "DropPath", "Identity", "Flatten",
    "Upsample", "UpsamplingBilinear2D", "UpsamplingNearest2D", "PixelShuffle", "MaxPool2D", "AvgPool2D",
    "AdaptiveAvgPool2D", "AdaptiveMaxPool2D",
}
_NORM_MARKERS = ("BatchNorm", "GroupNorm", "LayerNorm", "InstanceNorm", "LocalResponseNorm", "FrozenBN")

LOGITS_WEIGHT = 1.0
# (loss, weight) of feature pairs per task; L2Loss for the others (PaddleDetection's weight for YOLOv3 maps)
_FEATURE_LOSSES = {"seg": ({"type": "SegChannelwiseLoss", "tau": 1}, 0.5)}
_DEFAULT_FEATURE_LOSS = ({"type": "L2Loss"}, 0.1)
_LOSS_ABBR = {"SegChannelwiseLoss": "cwd", "L2Loss": "l2", "KLLoss": "kl"}


def _stderr(msg):
    print(msg, file=sys.stderr)


class SuggestedPair(dict):
    """A `distill:` pair dict; `why` says why it was chosen (a yaml comment when rendered)."""

    def __init__(self, *args, why="", **kwargs):
        super().__init__(*args, **kwargs)
        self.why = why


class SuggestedPairs(list):
    """The suggested pairs, with the (N, C, H, W) input both models ran on (`input_shape`)."""

    def __init__(self, pairs, input_shape):
        super().__init__(pairs)
        self.input_shape = input_shape


class _Model:
    """One forward of a model with every sublayer's output recorded (shapes, not tensors)."""

    def __init__(self, role, task, cfg, input_shape):
        self.role = role
        model = _user_errors(f"The {role} model could not be built", task.build_model, cfg)
        inputs = task.example_inputs(cfg, input_shape)
        self.input_hw = _input_hw(inputs)
        if self.input_hw is None:
            raise ConfigError(f"The {role}'s example input has no (N, C, H, W) image tensor; strides cannot be "
                              f"measured.")
        self.input_shape = image_shape(inputs)
        self.batch = self.input_shape[0]
        self.logits_ref = task.logits_ref(cfg)
        self.rows, self.output, self.ref_value = [], None, None
        order, handles = itertools.count(), []
        ref = self.logits_ref
        for name, layer in model.named_sublayers():
            row = {"name": name, "type": type(layer).__name__, "calls": 0, "done": None, "shape": None,
                   "params": sum(int(p.size) for p in layer.parameters())}
            self.rows.append(row)

            def hook(layer, inp, out, row=row):
                row["calls"] += 1
                row["done"] = next(order)
                row["shape"] = list(out.shape) if isinstance(out, paddle.Tensor) else None
                if not ref.is_model_output and row["name"] == ref.layer:
                    self.ref_value = out if ref.io == "output" else inp

            handles.append(layer.register_forward_post_hook(hook))

        def keep_output(layer, inp, out):
            self.output = out

        handles.append(model.register_forward_post_hook(keep_output))
        _user_errors(f"The {role} model failed on an example input of shape {_fmt(self.input_shape)}",
                     forward_with_hooks, model, handles, *inputs)

    def logits_shape(self):
        """The shape of the logits tensor, or None when the output holds no single class-score tensor."""
        ref = self.logits_ref
        value = self.output if ref.is_model_output else self.ref_value
        if value is None or (ref.is_model_output and ref.io != "output"):
            return None
        try:
            value = select(value, ref)
        except ConfigError:
            return None
        if not isinstance(value, paddle.Tensor) or value.ndim < 2:
            return None
        return list(value.shape)


def _user_errors(what, fn, *args):
    """fn(*args); a library's exception (a config the model cannot take) becomes a one-line ConfigError."""
    try:
        return fn(*args)
    except SlimError:
        raise
    except Exception as e:  # noqa: BLE001 - paddle and model libraries raise many kinds
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise ConfigError(f"{what}: {type(e).__name__}: {lines[0] if lines else 'no message'}") from e


def image_shape(inputs):
    """The shape of the first (N, C, H, W) tensor in a model's example inputs (a tensor, tuple or dict)."""
    if isinstance(inputs, paddle.Tensor):
        return list(inputs.shape) if inputs.ndim == 4 else None
    values = inputs.values() if isinstance(inputs, dict) else inputs if isinstance(inputs, (list, tuple)) else ()
    for value in values:
        shape = image_shape(value)
        if shape:
            return shape
    return None


def _input_hw(inputs):
    shape = image_shape(inputs)
    return tuple(shape[2:]) if shape else None


def _stride(size, out):
    return 2 ** max(0, round(math.log2(size / out))) if out else None


def _fmt(shape):
    return "x".join(map(str, shape))


def _fmt_stride(stride):
    return str(stride[0]) if stride[0] == stride[1] else f"{stride[0]}x{stride[1]}"


def _map_shape(row, input_hw, batch):
    """The (N, C, H, W) shape a row's output is compared as: its map, or the map of its (N, L, D) tokens on
    their patch grid (row["tokens"] is then set); None for anything else."""
    shape = row["shape"]
    if shape is None:
        return None
    if len(shape) == 4:
        return shape
    if len(shape) == 3 and shape[0] == batch:
        tokens = token_grid(shape[1], input_hw)
        if tokens is not None:
            row["tokens"] = tokens
            return [shape[0], shape[2], *tokens["grid"]]
    return None


def _skip_reason(row, input_hw, class_channels, batch=None):
    """Why a recorded layer is no pair candidate (None when it is one)."""
    kind = row["type"]
    if row["calls"] == 0:
        return "did not run"
    if row["calls"] > 1:
        return "runs more than once per forward"
    if kind in _SKIP_TYPES or any(m in kind for m in _NORM_MARKERS) or row["params"] == 0:
        return "activation, normalisation, dropout, pooling or a layer without weights"
    shape = _map_shape(row, input_hw, batch)
    if shape is None:
        return "output is not one (N, C, H, W) map or (N, L, D) tokens on a patch grid"
    if shape[2] == 1 and shape[3] == 1:
        return "1x1 (global) map"
    stride = (_stride(input_hw[0], shape[2]), _stride(input_hw[1], shape[3]))
    if min(stride) < MIN_STRIDE:
        return f"stride below {MIN_STRIDE} (stem)"
    if class_channels is not None and shape[1] == class_channels:
        return "class-score map (covered by the logits)"
    return None


def _row_stride(row, input_hw):
    """The (h, w) stride of a row that ran once and returned one (N, C, H, W) map larger than 1x1, else None."""
    shape = row["shape"]
    if row["calls"] != 1 or shape is None or len(shape) != 4 or (shape[2] == 1 and shape[3] == 1):
        return None
    return _stride(input_hw[0], shape[2]), _stride(input_hw[1], shape[3])


def _resampling_blocks(rows, input_hw):
    """Names of blocks that change the resolution once: their output and their inner maps span exactly two
    strides (a strided residual block, not a whole multi-stage backbone), with their stride."""
    spans = {}
    for row in rows:
        stride = _row_stride(row, input_hw)
        if stride is None:
            continue
        parts = row["name"].split(".")
        for i in range(1, len(parts) + 1):
            spans.setdefault(".".join(parts[:i]), set()).add(stride)
    blocks = {}
    for row in rows:
        stride = _row_stride(row, input_hw)
        if stride is not None and len(spans.get(row["name"], ())) == 2:
            blocks[row["name"]] = stride
    return blocks


def _inside_resampling_block(row, blocks, input_hw):
    """True for an inner step of a block that changes the resolution, at the block's input resolution
    (e.g. the 1x1 reduction before the strided conv of a bottleneck): the block's output is the stage's."""
    own = _row_stride(row, input_hw)
    parts = row["name"].split(".")
    for i in range(len(parts) - 1, 0, -1):
        stride = blocks.get(".".join(parts[:i]))
        if stride is not None and stride != own:
            return True
    return False


def _stages(model, class_channels):
    """{stride: (last candidate row, number of candidates)} and the skip counts."""
    stages, skipped = {}, {}
    blocks = _resampling_blocks(model.rows, model.input_hw)
    for row in model.rows:
        reason = _skip_reason(row, model.input_hw, class_channels, model.batch)
        # (tokens are exempt: a Swin stage's blocks run before its patch merging, not inside a bottleneck)
        if reason is None and not row.get("tokens") and _inside_resampling_block(row, blocks, model.input_hw):
            reason = "inside a block whose output has another resolution"
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        row["map_shape"] = shape = _map_shape(row, model.input_hw, model.batch)
        stride = (_stride(model.input_hw[0], shape[2]), _stride(model.input_hw[1], shape[3]))
        last, count = stages.get(stride, (None, 0))
        if last is None or row["done"] > last["done"]:
            last = row
        stages[stride] = (last, count + 1)
    return dict(sorted(stages.items())), skipped


def _ref_yaml(ref):
    """A logits reference as a `distill:` side: a name, or {layer, io, idx}."""
    if ref.io == "output" and ref.idx is None and ref.call is None:
        return ref.layer
    out = {"layer": ref.layer}
    if ref.io != "output":
        out["io"] = ref.io
    if ref.idx is not None:
        out["idx"] = ref.idx
    if ref.call is not None:
        out["call"] = ref.call
    return out


def _logits_pair(task, s_cfg, student, teacher, log):
    s_shape, t_shape = student.logits_shape(), teacher.logits_shape()
    where = student.logits_ref.describe()
    if s_shape is None or t_shape is None:
        instead = "; the head's output maps, a detector's logits, are paired below" if task.name == "det" else ""
        log(f"logits: no pair: {where} of the {task.name} model is not one class-score tensor "
            f"(e.g. a detector's boxes or loss dict){instead}.")
        return None, None
    if s_cfg.get("distill_token"):
        log(f"logits: no pair: the student config's distill_token trains its distillation head on the teacher's "
            f"logits ({_fmt(s_shape)}).")
        return None, s_shape[1]
    if s_cfg.get("distill_loss"):
        terms = s_cfg["distill_loss"].get("types") if isinstance(s_cfg["distill_loss"], dict) else None
        types = [t.get("type") if isinstance(t, dict) else t for t in (terms or [])] or ["its terms"]
        log(f"logits: no pair: the student config's distill_loss ({', '.join(map(str, types))}) already compares "
            f"{where} ({_fmt(s_shape)}).")
        return None, s_shape[1]
    if s_shape[1] != t_shape[1]:
        log(f"logits: no pair: the student predicts {s_shape[1]} classes and the teacher {t_shape[1]}.")
        return None, None
    why = (f"logits: {where}, student {_fmt(s_shape)}, teacher {_fmt(t_shape)}: KLLoss between the class "
           f"distributions, weight {LOGITS_WEIGHT} (the student config has no distill_loss)")
    pair = SuggestedPair(name="kl_logits", student=_ref_yaml(student.logits_ref),
                         teacher=_ref_yaml(teacher.logits_ref), loss="KLLoss", weight=LOGITS_WEIGHT, why=why)
    if s_shape[2:] != t_shape[2:]:
        pair["align"] = {"type": "resize", "resize": "student"}
        pair.why += "; sizes differ: the student's logits are resized to the teacher's"
    return pair, s_shape[1]


def _describe_stages(model, stages, skipped, log):
    total = len(model.rows)
    cands = sum(n for _, n in stages.values())
    log(f"{model.role}: input {_fmt(model.input_shape)}, {total} sublayers, {cands} candidate map(s) "
        f"in {len(stages)} stage(s)")
    for stride, (row, count) in stages.items():
        log(f"  stride {_fmt_stride(stride):>3}: {count:3d} candidate(s), last {row['name']} ({row['type']}, "
            f"{_fmt_row(row)})")
    if skipped:
        log("  skipped: " + "; ".join(f"{n} {reason}" for reason, n in sorted(skipped.items(), key=lambda x: -x[1])))


def _fmt_row(row):
    """A row's output shape; tokens with their patch grid."""
    tokens = row.get("tokens")
    if not tokens:
        return _fmt(row["shape"])
    lead = f"{tokens['skip']}+" if tokens["skip"] else ""
    return f"{_fmt(row['shape'])} tokens: {lead}{tokens['grid'][0]}x{tokens['grid'][1]}"


def _token_conversion(row):
    """The `align.student` / `align.teacher` value that makes a token row's output a map (None for a map)."""
    tokens = row.get("tokens")
    if not tokens:
        return None
    h, w = tokens["grid"]
    if h == w:
        return "tokens_to_map"
    return {"type": "tokens_to_map", "skip": tokens["skip"], "grid": [h, w]}


def _models_on_one_input(s_task, s_cfg, t_task, t_cfg, input_shape, log):
    """Both models run on an input of one size (strides are compared): the given one, else each config's example
    when they agree, else the teacher's size for both (or the student's, when the student takes no other, e.g. a
    ViT made for 28x28 images)."""
    if input_shape is None:
        s_shape = image_shape(s_task.example_inputs(s_cfg))
        t_shape = image_shape(t_task.example_inputs(t_cfg))
        if s_shape and t_shape and s_shape[2:] != t_shape[2:]:
            for first, shape in (("teacher", t_shape), ("student", s_shape)):
                try:
                    student = _Model("student", s_task, s_cfg, s_shape[:2] + shape[2:])
                    teacher = _Model("teacher", t_task, t_cfg, t_shape[:2] + shape[2:])
                except ConfigError:
                    continue
                log(f"the student's and the teacher's example inputs differ ({_fmt(s_shape)} vs {_fmt(t_shape)}): "
                    f"both models run at the {first}'s size {shape[2]}x{shape[3]}")
                return student, teacher
    return _Model("student", s_task, s_cfg, input_shape), _Model("teacher", t_task, t_cfg, input_shape)


def _region(name):
    return name.split(".")[0]


def suggest_pairs(s_task, s_cfg, t_task, t_cfg, input_shape=None, log=_stderr):
    """`distill:` pair dicts (`SuggestedPair`s: plain dicts with a `why`) for the student and teacher configs.

    `input_shape` (N, C, H, W) overrides the task's example input; `log` receives the reasoning."""
    if s_task.name != t_task.name:
        raise ConfigError(f"The teacher config is a {t_task.name} model but the student config is {s_task.name}: "
                          f"both must be the same task.")
    # (the task's class-count check runs when training; it may need the dataset, a suggestion does not)
    t_cfg = s_task.prepare_teacher_config(s_cfg, t_cfg)
    student, teacher = _models_on_one_input(s_task, s_cfg, t_task, t_cfg, input_shape, log)

    pairs = []
    logits, class_channels = _logits_pair(s_task, s_cfg, student, teacher, log)
    if logits is not None:
        pairs.append(logits)
    s_stages, s_skipped = _stages(student, class_channels)
    t_stages, t_skipped = _stages(teacher, class_channels)
    _describe_stages(student, s_stages, s_skipped, log)
    _describe_stages(teacher, t_stages, t_skipped, log)

    loss, weight = _FEATURE_LOSSES.get(s_task.name, _DEFAULT_FEATURE_LOSS)
    abbr = _LOSS_ABBR.get(loss["type"], loss["type"].lower())
    for stride in sorted(set(s_stages) | set(t_stages)):
        if stride not in s_stages or stride not in t_stages:
            only = "student" if stride in s_stages else "teacher"
            log(f"stride {_fmt_stride(stride)}: only the {only} has maps at this resolution: no pair.")
            continue
        s, t = s_stages[stride][0], t_stages[stride][0]
        is_head = s_task.name == "det" and "head" in _region(s["name"]).lower()
        what = ("the detector's head output maps (its raw predictions: the logits of a detector)" if is_head
                else "the last layer of the stage")
        why = (f"stride {_fmt_stride(stride)}: {what}: student {s['name']} ({_fmt_row(s)}), teacher "
               f"{t['name']} ({_fmt_row(t)}); {loss['type']}, weight {weight}")
        pair = SuggestedPair(name=f"{abbr}_{_region(s['name'])}_s{_fmt_stride(stride)}", student=s["name"],
                             teacher=t["name"], loss=loss["type"] if len(loss) == 1 else dict(loss),
                             weight=weight, why=why)
        align = {}
        for side, row in (("student", s), ("teacher", t)):
            conversion = _token_conversion(row)
            if conversion is not None:
                align[side] = conversion
                pair.why += f"; the {side}'s tokens as a map of their patch grid (tokens_to_map)"
        s_shape, t_shape = s["map_shape"], t["map_shape"]
        if s_shape[1] != t_shape[1]:
            align["type"] = "1x1conv"
            pair.why += f"; channels differ ({s_shape[1]} vs {t_shape[1]}): a 1x1conv connector"
        if s_shape[2:] != t_shape[2:]:
            align.setdefault("type", "resize")
            align["resize"] = "student"
            pair.why += "; H, W differ: the student map is resized to the teacher's"
        if align:
            pair["align"] = align
        pairs.append(pair)

    if not pairs:
        raise ConfigError("No pair to suggest: the models share no stage of (N, C, H, W) maps at stride "
                          f">= {MIN_STRIDE} and have no comparable logits. List their layers with "
                          "`python tools/list_layers.py -c CONFIG.yml` and write the pairs by hand.")
    parse_pairs([dict(p) for p in pairs])  # the block is accepted as written
    log(f"{len(pairs)} pair(s):")
    for pair in pairs:
        log(f"  {pair['name']}: {pair.why}")
    return SuggestedPairs(pairs, student.input_shape)


def render_pairs(pairs, header=()):
    """A ready `distill:` yaml block: comment lines from `header`, then one commented entry per pair."""
    lines = [f"# {line}" for line in header]
    lines.append("distill:")
    for pair in pairs:
        why = getattr(pair, "why", "")
        if why:
            lines.append(f"  # {why}")
        keys = [k for k in ("name", "student", "teacher", "loss", "weight", "align") if k in pair]
        for i, key in enumerate(keys):
            lines.append(f"  {'-' if i == 0 else ' '} {key}: {_flow(pair[key])}")
    return "\n".join(lines) + "\n"


def _flow(value):
    """One value as inline yaml: a scalar, or a {flow: mapping}."""
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10 ** 6)
    if text.endswith("\n...\n"):  # a bare scalar document
        text = text[:-len("\n...\n")]
    return text.strip()
