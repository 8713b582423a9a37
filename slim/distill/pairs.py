"""Distillation pairs: which student tensor is compared with which teacher tensor, by which loss.

Three spellings are accepted and turned into the same `Pair` objects:

1. The yaml `distill:` block of a student config (a list, or `{pairs: [...]}`):

       distill:
         - student: backbone.bb_1_1          # sublayer name, adaptor key, or {layer, io, idx}
           teacher: backbone.bb_1_3
           loss: SegChannelwiseLoss          # or {type: SegChannelwiseLoss, tau: 4}
           args: {tau: 4}
           weight: 1.0
           align: {type: 1x1conv}            # connector when channels differ; resize: student|teacher
                                             # student/teacher: tokens_to_map, map_to_tokens, ... (tokens.py)
           weight_schedule: {type: linear, from: 0, to: 1, end: 500}   # optional (weight_schedule.py)
           teacher_name: t2                  # with several teachers: whose tensor (or `teacher: t2.LAYER`)
           ensemble: mean_prob               # or: all teachers' tensors combined (mean_prob, mean_logit) or
                                             # one term per teacher (per_teacher); see slim/distill/ensemble.py

2. The PaddleSeg tutorial's `prepare_distill_config()` list, with keys resolved through the adaptors:
   `{'feature_type': 'hidden', 's_feature_idx': 0, 't_feature_idx': 0,
     'loss_function': 'SegChannelwiseLoss', 'weight': 1.0, ...loss arguments}`.

3. A PaddleSlim 2.6 `DistillConfig` list (or its yaml file), as is.
"""
import copy
import difflib
import os

import yaml

from .adaptor import LayerRef, split_mapping_key
from .errors import ConfigError
from .tokens import parse_conversion
from .weight_schedule import build_schedule

_YAML_PAIR_KEYS = {"name", "student", "teacher", "loss", "args", "weight", "align", "weight_schedule", "teacher_name",
                   "ensemble"}
ENSEMBLES = ("mean_prob", "mean_logit", "per_teacher")
_TUTORIAL_KEYS = {"feature_type", "s_feature_idx", "t_feature_idx", "loss_function", "weight", "align",
                  "name", "weight_schedule"}
ALIGN_TYPES = ("1x1conv", "3x3conv", "1x1conv+bn", "3x3conv+bn", "linear", "linear+bn", "resize")


class AdaptorKey:
    """A tensor named by a key of an adaptor's `mapping_layers()` (e.g. 'hidden_0')."""

    def __init__(self, key):
        split_mapping_key(key)
        self.key = key

    def describe(self):
        return repr(self.key)

    def __repr__(self):
        return f"AdaptorKey({self.key!r})"


class Pair:
    """One distillation term: `weight * loss(student_sources, teacher_sources)`; with a `schedule`
    (weight_schedule.py) the weight of a step is `weight x schedule.factor(...)`. `origin` says where the
    weight is configured (e.g. `distill.0.weight`), for messages that suggest another value.

    With several teachers, `teacher_name` names the teacher whose tensors are compared (None: the one
    teacher, or the prefix of the teacher sources, `t2.backbone.stage3`), and `ensemble` combines every
    teacher's (`mean_prob`, `mean_logit`) or makes one term per teacher (`per_teacher`)."""

    def __init__(self, name, student, teacher, loss, weight=1.0, align=None, schedule=None, origin=None,
                 teacher_name=None, ensemble=None):
        self.name = name
        self.student = tuple(student)
        self.teacher = tuple(teacher)
        self.loss = loss
        self.weight = float(weight)
        self.align = normalize_align(align, name)
        self.schedule = build_schedule(schedule, f"pair {name!r}")
        self.origin = origin
        self.teacher_name = None if teacher_name is None else str(teacher_name)
        if ensemble is not None and ensemble not in ENSEMBLES:
            raise ConfigError(f"Pair {name!r}: ensemble must be one of {', '.join(ENSEMBLES)}, got {ensemble!r}.")
        self.ensemble = ensemble
        self.teachers = None  # the teachers whose tensors it compares, set by the Distiller

    def for_teachers(self, teachers, name=None, teacher=None):
        """A copy comparing the tensors of `teachers` (a list of names); sources and name may change."""
        pair = copy.copy(self)
        pair.name = name or self.name
        pair.teacher = self.teacher if teacher is None else tuple(teacher)
        pair.teachers = list(teachers)
        return pair

    def describe(self):
        s = ", ".join(_describe(x) for x in self.student)
        t = ", ".join(_describe(x) for x in self.teacher)
        return f"pair {self.name!r} (student {s} vs teacher {t}, {self.loss['type']})"

    def __repr__(self):
        return f"Pair({self.name!r}, {self.student}, {self.teacher}, {self.loss}, weight={self.weight})"


def _describe(source):
    return source.describe() if hasattr(source, "describe") else repr(source)


def source_name(source):
    """A stable name for the tensor a pair's source denotes (e.g. the key of a teacher-output cache)."""
    if isinstance(source, AdaptorKey):
        return f"adaptor tensor {source.key!r}"
    return _describe(source)


def normalize_align(align, pair_name="?"):
    """Accept our spelling ({type, in_channels, out_channels, bn, resize}) and PaddleSlim's
    ({align_type, in_channel, out_channel, transpose_model})."""
    if align in (None, False):
        return None
    if isinstance(align, str):
        align = {"type": align}
    if not isinstance(align, dict):
        raise ConfigError(f"`align` of pair {pair_name!r} must be a dict like {{type: 1x1conv}}, got {align!r}")
    renames = {"align_type": "type", "in_channel": "in_channels", "out_channel": "out_channels"}
    out = {renames.get(k, k): v for k, v in align.items()}
    side = out.pop("transpose_model", "student")
    if side != "student":
        raise ConfigError(f"Pair {pair_name!r}: connectors map the student to the teacher; "
                          f"transpose_model={side!r} is not supported.")
    out.pop("weight_init", None)
    unknown = set(out) - {"type", "in_channels", "out_channels", "bn", "resize", "student", "teacher"}
    if unknown:
        raise ConfigError(f"Pair {pair_name!r}: unknown `align` key(s) {sorted(unknown)}; "
                          f"use type, in_channels, out_channels, bn, resize, student, teacher.")
    # tokens <-> maps on either side, before the connector (tokens.py)
    out["student"] = parse_conversion(out.get("student"), pair_name, "student")
    out["teacher"] = parse_conversion(out.get("teacher"), pair_name, "teacher")
    kind = str(out.get("type", "resize")).lower()
    if kind not in ALIGN_TYPES:
        raise ConfigError(f"Pair {pair_name!r}: align type {kind!r} is not one of {', '.join(ALIGN_TYPES)}.")
    if kind.endswith("+bn"):
        kind, out["bn"] = kind[:-3], True
    out["type"] = kind
    out["bn"] = bool(out.get("bn", False))
    out["resize"] = out.get("resize", "student")
    if out["resize"] not in ("student", "teacher", None, False):
        raise ConfigError(f"Pair {pair_name!r}: align.resize must be 'student' or 'teacher', "
                          f"got {out['resize']!r}.")
    return out


def _loss_cfg(loss, args, pair_name):
    if isinstance(loss, str):
        cfg = {"type": loss}
    elif isinstance(loss, dict) and "type" in loss:
        cfg = dict(loss)
    else:
        raise ConfigError(f"Pair {pair_name!r}: `loss` must be a name or {{type: NAME, ...}}, got {loss!r}")
    if args:
        if not isinstance(args, dict):
            raise ConfigError(f"Pair {pair_name!r}: `args` must be a mapping, got {args!r}")
        cfg.update(args)
    return cfg


def _sources(value, pair_name, side):
    values = value if isinstance(value, (list, tuple)) else [value]
    if not values:
        raise ConfigError(f"Pair {pair_name!r}: `{side}` is empty")
    return [v if isinstance(v, (LayerRef, AdaptorKey)) else _source(v) for v in values]


def _source(value):
    # Strings are resolved later against the adaptor (keys) or the model (sublayer names).
    return value if isinstance(value, str) else LayerRef.parse(value)


def _unique(name, taken):
    base, n = name, 1
    while name in taken:
        n += 1
        name = f"{base}#{n}"
    taken.add(name)
    return name


def check_keys(entry, allowed, where):
    """A ConfigError for keys of `entry` not in `allowed`, each with its nearest allowed key."""
    unknown = [k for k in entry if k not in allowed]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(str(k), sorted(allowed), n=1)
            hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(f"{where}: unknown key(s) {', '.join(hints)}; allowed: {', '.join(sorted(allowed))}")


def _yaml_pairs(entries, taken):
    pairs = []
    for i, entry in enumerate(entries):
        where = f"distill pair #{i}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a mapping with student, teacher and loss, got {entry!r}")
        check_keys(entry, _YAML_PAIR_KEYS, where)
        for key in ("student", "teacher", "loss"):
            if key not in entry:
                raise ConfigError(f"{where} has no `{key}`; a pair needs student, teacher and loss")
        loss = _loss_cfg(entry["loss"], entry.get("args"), entry.get("name", where))
        default = f"{loss['type']}:{_short(entry['student'])}"
        name = _unique(str(entry.get("name") or default), taken)
        pairs.append(Pair(name, _sources(entry["student"], name, "student"),
                          _sources(entry["teacher"], name, "teacher"), loss, entry.get("weight", 1.0),
                          entry.get("align"), entry.get("weight_schedule"), origin=f"distill.{i}.weight",
                          teacher_name=entry.get("teacher_name"), ensemble=entry.get("ensemble")))
    return pairs


def _short(value):
    values = value if isinstance(value, (list, tuple)) else [value]
    return "+".join(v["layer"] if isinstance(v, dict) else str(v) for v in values)


def _tutorial_pairs(entries, taken):
    pairs = []
    for i, entry in enumerate(entries):
        where = f"distill config #{i}"
        for key in ("feature_type", "s_feature_idx", "t_feature_idx", "loss_function"):
            if key not in entry:
                raise ConfigError(f"{where} has no {key!r}; each entry needs feature_type, s_feature_idx, "
                                  f"t_feature_idx, loss_function (and optionally weight)")
        ftype = entry["feature_type"]
        s_idx = entry["s_feature_idx"] if isinstance(entry["s_feature_idx"], (list, tuple)) else [
            entry["s_feature_idx"]]
        t_idx = entry["t_feature_idx"] if isinstance(entry["t_feature_idx"], (list, tuple)) else [
            entry["t_feature_idx"]]
        loss = {"type": entry["loss_function"]}
        loss.update({k: v for k, v in entry.items() if k not in _TUTORIAL_KEYS})
        s_keys = [AdaptorKey(f"{ftype}_{j}") for j in s_idx]
        t_keys = [AdaptorKey(f"{ftype}_{j}") for j in t_idx]
        name = _unique(str(entry.get("name") or f"{loss['type']}:{ftype}_{'_'.join(map(str, s_idx))}"), taken)
        pairs.append(Pair(name, s_keys, t_keys, loss, entry.get("weight", 1.0), entry.get("align"),
                          entry.get("weight_schedule"),
                          origin=f"'weight' of entry {i} of prepare_distill_config() (distill_config.py)"))
    return pairs


# PaddleSlim 2.6 loss names and the arguments that carry over.
_PADDLESLIM_LOSSES = {
    "MSELoss": ("L2Loss", ()),
    "L1Loss": ("L1Loss", ()),
    "SmoothL1Loss": ("SmoothL1Loss", ()),
    "KLLoss": ("KLLoss", ("axis",)),
    "CELoss": ("DistillCrossEntropyLoss", ("axis",)),
    "DMLLoss": ("DMLLoss", ("axis",)),
    "RKDLoss": ("RKDLoss", ()),
}
_DISTANCE_MODES = {"l2": "L2Loss", "l1": "L1Loss", "smooth_l1": "SmoothL1Loss"}
_PADDLESLIM_IGNORED = {"act": "softmax", "label_act": "softmax", "reduction": "mean", "eps": None,
                       "epsilon": None}


def _paddleslim_loss(cfg, where):
    name = cfg.pop("loss_function")
    if name == "DistanceLoss":
        mode = cfg.pop("mode", "l2")
        if mode not in _DISTANCE_MODES:
            raise ConfigError(f"{where}: DistanceLoss mode {mode!r} is not one of l1, l2, smooth_l1")
        ours, carried = _DISTANCE_MODES[mode], ()
    elif name in _PADDLESLIM_LOSSES:
        ours, carried = _PADDLESLIM_LOSSES[name]
    else:
        raise ConfigError(f"{where}: PaddleSlim loss {name!r} has no equivalent here; supported: "
                          f"{', '.join(sorted(_PADDLESLIM_LOSSES))}, DistanceLoss. Or write the pair in "
                          f"this package's yaml form with any registered loss.")
    loss = {"type": ours}
    for key in list(cfg):
        if key in carried:
            loss[key] = cfg.pop(key)
        elif key in _PADDLESLIM_IGNORED:
            value = cfg.pop(key)
            if _PADDLESLIM_IGNORED[key] is not None and value != _PADDLESLIM_IGNORED[key]:
                raise ConfigError(f"{where}: {name} with {key}={value!r} is not supported "
                                  f"(only {key}={_PADDLESLIM_IGNORED[key]!r})")
    if name in ("KLLoss", "CELoss", "DMLLoss"):
        loss.setdefault("axis", -1)  # PaddleSlim's default class axis is the last one
    temperature = cfg.pop("temperature", 1.0)
    if temperature != 1.0:
        if ours == "RKDLoss":
            raise ConfigError(f"{where}: RKDLoss takes no temperature")
        loss["temperature"] = temperature
    return loss


def _none(value):
    return None if value in (None, "None") else value


def _paddleslim_pairs(entries, taken):
    pairs = []
    for i, raw in enumerate(entries):
        where = f"DistillConfig #{i}"
        cfg = dict(raw)
        model_pairs = cfg.pop("model_name_pairs", [["student_0", "teacher_0"]])
        if model_pairs and isinstance(model_pairs[0], str):
            model_pairs = [model_pairs]
        if [list(p) for p in model_pairs] != [["student_0", "teacher_0"]]:
            raise ConfigError(f"{where}: model_name_pairs {model_pairs!r} is not supported; one student and "
                              f"one teacher are distilled, model_name_pairs: [[student_0, teacher_0]].")
        layers = cfg.pop("layers", None)
        if not layers:
            raise ConfigError(f"{where}: no `layers` given (a list of {{layers_name: [student, teacher]}})")
        weight = cfg.pop("weight", 1.0)
        schedule = cfg.pop("weight_schedule", None)
        align = cfg.pop("align_params", None)
        loss = _paddleslim_loss(cfg, where)
        if cfg:
            loss.update(cfg)  # remaining keys are the loss's own arguments
        for j, layer in enumerate(layers):
            names = layer["layers_name"]
            io = layer.get("io", ["output", "output"])
            idx = [_none(v) for v in layer.get("idx", [None, None])]
            if len(names) != 2:
                raise ConfigError(f"{where}, layer #{j}: layers_name needs [student_layer, teacher_layer]")
            student = LayerRef(names[0], io[0], idx[0])
            teacher = LayerRef(names[1], io[1], idx[1])
            name = _unique(f"{loss['type']}:{names[0]}", taken)
            pairs.append(Pair(name, [student], [teacher], dict(loss), weight, align, schedule,
                              origin=f"weight of DistillConfig #{i}"))
    return pairs


def _read_pairs_file(path):
    if not os.path.isfile(path):
        raise ConfigError(f"Distill config file not found: {path}")
    with open(path, "r", encoding="utf-8") as f:
        return yaml.safe_load(f)


def parse_pairs(config):
    """Turn any accepted spelling of a distillation config into a list of `Pair`s."""
    if isinstance(config, str):
        config = _read_pairs_file(config)
    if config is None:
        return []
    if isinstance(config, dict):
        if "DistillConfig" in config:
            config = config["DistillConfig"]
        elif "distill" in config:
            return parse_pairs(config["distill"])
        elif "pairs" in config:
            config = config["pairs"]
        else:
            raise ConfigError(f"A distill config must be a list of pairs (or {{pairs: [...]}}), got keys "
                              f"{sorted(config)}")
    if not isinstance(config, (list, tuple)):
        raise ConfigError(f"A distill config must be a list of pairs, got {type(config).__name__}")
    entries = list(config)
    if entries and all(isinstance(e, dict) and set(e) == {"DistillConfig"} for e in entries):
        entries = [c for e in entries for c in e["DistillConfig"]]  # PaddleSlim's yaml2config layout
    taken = set()
    if all(isinstance(e, Pair) for e in entries):
        return entries
    if entries and all(isinstance(e, dict) and "loss_function" in e and "layers" in e for e in entries):
        return _paddleslim_pairs(entries, taken)
    if entries and all(isinstance(e, dict) and "feature_type" in e for e in entries):
        return _tutorial_pairs(entries, taken)
    return _yaml_pairs(entries, taken)


def logit_pairs(distill_loss, logits_ref):
    """PaddleSeg's `distill_loss: {types: [{type: KLLoss, ...}], coef: [3]}` as pairs on the logits. A type's
    `weight_schedule` (or one beside `types`, for every type) schedules its coef (weight_schedule.py); with several
    teachers `ensemble: mean_prob|mean_logit|per_teacher` or `teacher_name: t1` says whose logits."""
    if not distill_loss:
        return []
    if not isinstance(distill_loss, dict) or "types" not in distill_loss:
        raise ConfigError(f"`distill_loss` must look like {{types: [{{type: KLLoss}}], coef: [3]}}, got "
                          f"{distill_loss!r}")
    check_keys(distill_loss, {"types", "coef", "weight_schedule", "ensemble", "teacher_name"}, "distill_loss")
    types = list(distill_loss["types"])
    coef = list(distill_loss.get("coef", [1.0] * len(types)))
    if len(coef) != len(types):
        raise ConfigError(f"distill_loss: {len(types)} types but {len(coef)} coef values; give one coef per type.")
    taken, pairs = set(), []
    for i, (loss, weight) in enumerate(zip(types, coef)):
        cfg = _loss_cfg(loss, None, "distill_loss")
        schedule = cfg.pop("weight_schedule", distill_loss.get("weight_schedule"))
        name = _unique(f"distill_{cfg['type']}", taken)
        pairs.append(Pair(name, [logits_ref], [logits_ref], cfg, weight, schedule=schedule,
                          origin=f"distill_loss.coef.{i}", teacher_name=distill_loss.get("teacher_name"),
                          ensemble=distill_loss.get("ensemble")))
    return pairs
