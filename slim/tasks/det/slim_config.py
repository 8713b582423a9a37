"""PaddleDetection's `--slim_config` for distillation, read as two separate configs.

    python tools/train.py -c student.yml --slim_config distill.yml

The slim config `_BASE_`s the teacher's config and adds `pretrain_weights` (the teacher's full weights),
`slim: Distill`, `slim_method` and `distill_loss` with its section. ppdet merges it into its one global
config, so the teacher's readers, optimizer and model sections overwrite the student's (PaddleDetection
#5976). Here the slim config, `_BASE_` resolved and the method keys taken out, is the teacher's config and
nothing else; the student's data, readers, optimizer and schedule come from `-c` alone. The method becomes
this package's distillation pairs:

    (no slim_method)  distill_loss: DistillYOLOv3Loss {weight: W}: YOLOv3DistillLoss on each YOLOv3 output
                      level (yolo_head.yolo_output.i), weight W (ppdet: W x the sum of the levels)
    CWD               ppdet's CWDFeatureLoss (PPDetCWDFeatureLoss: no tau^2, 1e-5 inside the logs, `normalize`
                      and its align convolution as ppdet's; not the engine's tau^2-scaled SegChannelwiseLoss)
                      on each neck level named in distill_loss_name, weight W of its section; GFL students
                      also on each level's class-score map (head.gfl_head_cls), as ppdet's CWDDistillModel
                      does. `distill_loss: ChannelWiseDivergence` (the name in PaddleDetection's CWD configs;
                      ppdet 2.6 registers only CWDFeatureLoss) reads its section the same way
    FGD               ppdet's FGDFeatureLoss on each neck level named in distill_loss_name, with the
                      batch's ground-truth boxes
    LD                Localization Distillation of GFL: ppdet's LDGFLHead terms loss_ld, loss_ld_vlr, loss_kd
                      (their settings from the student's LDGFLHead section, which trains as a GFLHead)
    PPYOLOEDistill    DistillPPYOLOELoss of two PP-YOLOE(+) detectors (architecture PPYOLOE, or YOLOv3 with a
                      PPYOLOEHead): `logits_loss` (PPYOLOELogitsLoss: QFL, GIoU, DFL [+ KD] between the heads'
                      outputs) and `feat_loss_i` per level of feat_distill_place (neck or backbone outputs;
                      FGDFeatureLoss or ppdet's CWD / PKD / MGD / mimic loss); every term and the student's
                      detection loss scaled by ppdet's alpha 0.125 (see ppyoloe_pairs)

The method's section may add `weight_schedule:` (slim/distill/weight_schedule.py), given to each of its terms, e.g.
`DistillYOLOv3Loss: {weight: 1000, weight_schedule: {type: constant, stop: 100, by: epoch}}`.

A `slim: QAT` config (configs/slim/quant/*_qat.yml) is quantisation-aware training of the -c model, and
is merged into the student's config as ppdet merges it (its `pretrain_weights`, the fp32 model QAT starts
from, and any `epoch`, `LearningRate`, ... win); `QAT.quant_config` becomes the student's `quant:` section
(slim/quant/qat.py) and `QAT.print_model` logs the model before and after quantisation. There is no teacher
(`teacher_cfg` None); `--slim_config D.yml --quant_config Q.yml` distils into the QAT student.
"""
import copy
import math

from slim.distill.config import parse_yaml_with_bases
from slim.distill.errors import ConfigError

SUPPORTED = ("no slim_method (YOLOv3, distill_loss: DistillYOLOv3Loss)", "CWD", "FGD", "LD", "PPYOLOEDistill")
METHOD_KEYS = ("slim", "slim_method", "distill_loss", "distill_loss_name", "pretrain_weights")
CWD_LOSSES = ("ChannelWiseDivergence", "CWDFeatureLoss")
# keys of the slim config (and the teacher config it inherits) that only the student's config provides here
TRAINING_KEYS = (
    "TrainDataset", "EvalDataset", "TestDataset", "TrainReader", "EvalReader", "TestReader", "LearningRate",
    "OptimizerBuilder", "epoch", "snapshot_epoch", "worker_num", "log_iter", "save_dir", "use_ema", "ema_decay",
    "ema_decay_type", "ema_black_list", "metric", "map_type", "find_unused_parameters", "use_gpu", "use_xpu",
    "use_npu", "use_mlu", "print_flops", "print_params", "use_amp", "amp_level", "fp16", "amp", "sync_bn",
    "reference_batch_size", "reference_gpus", "iters", "epochs", "batch_size", "use_warmup", "cycle_epoch",
)


class SlimConfig:
    """What a slim config means here: the teacher's config, its weights, the pairs, the student's config, and
    `origins`: pair name -> where its weight is set (for messages that suggest another weight)."""

    def __init__(self, teacher_cfg, weights, pairs, student_cfg, method, notes, origins=None):
        self.teacher_cfg, self.weights, self.pairs = teacher_cfg, weights, pairs
        self.student_cfg, self.method, self.notes = student_cfg, method, notes
        self.origins = dict(origins or {})


def _section(cfg, name, where):
    value = cfg.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: `{name}:` must be a mapping of its arguments, got {value!r}.")
    return {k: v for k, v in value.items() if k not in ("name", "type", "weight_schedule")}


def _schedule(raw):
    """The `weight_schedule` of the method's section (`distill_loss: X` names it), or None."""
    name = raw.get("distill_loss")
    section = raw.get(name) if isinstance(name, str) else None
    return section.get("weight_schedule") if isinstance(section, dict) else None


def _weight_origins(method, raw, path, pairs, student_cfg):
    """Pair name -> where the slim config (or the student's head) sets that term's weight."""
    loss = raw.get("distill_loss")
    origins = {}
    for pair in pairs:
        if method == "LD":
            head = (student_cfg.get(student_cfg.get("architecture")) or {}).get("head", "LDGFLHead")
            where = f"{head}.{pair['name']}.loss_weight of the student config"
        elif method == "PPYOLOEDistill":
            part = "logits" if pair["name"] == "logits_loss" else "feat"
            where = f"DistillPPYOLOELoss.loss_weight.{part} in {path}"
        elif method == "FGD":
            where = f"FGDFeatureLoss alpha_fgd, beta_fgd, gamma_fgd, lambda_fgd in {path} (its terms' scale)"
        else:
            where = f"{loss}.weight in {path}"
        origins[pair["name"]] = where
    return origins


def _arch_section(cfg):
    arch = cfg.get("architecture")
    return arch, dict(cfg.get(arch) or {})


def _head(cfg, key):
    arch, sec = _arch_section(cfg)
    name = sec.get(key)
    return name, dict(cfg.get(name) or {}) if isinstance(name, str) else {}


def _per_level(value, n, what):
    values = list(value) if isinstance(value, (list, tuple)) else [value] * n
    if len(values) != n:
        raise ConfigError(f"{what}: {len(values)} values for {n} levels (distill_loss_name); give one value, "
                          f"or one per level.")
    return [int(v) for v in values]


def _loss_names(raw, path, method):
    names = raw.get("distill_loss_name")
    if not names or not isinstance(names, (list, tuple)):
        raise ConfigError(f"{path}: slim_method {method} needs `distill_loss_name:`, one name per neck level to "
                          f"distil (e.g. ['neck_f_0', 'neck_f_1', 'neck_f_2'] for three levels; the i-th name "
                          f"is the term on neck output i).")
    return [str(n) for n in names]


def _neck(level):
    return {"layer": "neck", "idx": level}


# ----- the methods ------------------------------------------------------------------------------------
def yolov3_pairs(raw, path, student_cfg):
    loss = raw.get("distill_loss")
    if loss != "DistillYOLOv3Loss":
        raise ConfigError(
            f"{path}: without `slim_method`, ppdet's distillation is the YOLOv3 one: set `distill_loss: "
            f"DistillYOLOv3Loss` (got {loss!r}), or pick a slim_method; supported: {', '.join(SUPPORTED)}.")
    if student_cfg.get("architecture") != "YOLOv3":
        raise ConfigError(f"{path}: DistillYOLOv3Loss distils YOLOv3 heads, but the student is "
                          f"{student_cfg.get('architecture')}; use slim_method CWD or FGD for other detectors.")
    weight = float(_section(raw, "DistillYOLOv3Loss", path).get("weight", 1000))
    _, head = _head(student_cfg, "yolo_head")
    masks = head.get("anchor_masks") or [[6, 7, 8], [3, 4, 5], [0, 1, 2]]
    iou_aware = bool(head.get("iou_aware", False))
    return [{"name": f"distill_yolov3_{i}", "student": f"yolo_head.yolo_output.{i}",
             "teacher": f"yolo_head.yolo_output.{i}",
             "loss": {"type": "YOLOv3DistillLoss", "num_anchors": len(mask), "iou_aware": iou_aware},
             "weight": weight} for i, mask in enumerate(masks)]


def cwd_pairs(raw, path, student_cfg, notes):
    """ppdet's CWDDistillModel as pairs: for the i-th name of distill_loss_name, ppdet's CWDFeatureLoss
    (PPDetCWDFeatureLoss: no tau^2, 1e-5 inside the logs, `normalize` as ppdet's) on neck level i and, for GFL,
    on level i's class-score map too (ppdet calls the same loss on both and names the neck term neck_f_i). The
    section's `weight` multiplies each term, as ppdet's loss_weight does."""
    loss = raw.get("distill_loss")
    if loss not in CWD_LOSSES:
        raise ConfigError(f"{path}: slim_method CWD needs `distill_loss:` {' or '.join(CWD_LOSSES)} (got {loss!r}).")
    sec = _section(raw, loss, path)
    allowed = ("student_channels", "teacher_channels", "normalize", "tau", "weight")
    unknown = sorted(set(sec) - set(allowed))
    if unknown:
        raise ConfigError(f"{path}: {loss} has no argument(s) {unknown}; ppdet's CWDFeatureLoss takes "
                          f"{', '.join(allowed)}.")
    tau, weight, normalize = float(sec.get("tau", 1.0)), float(sec.get("weight", 1.0)), sec.get("normalize", False)
    if tau <= 0:
        raise ConfigError(f"{path}: {loss}.tau must be > 0 (got {tau:g}).")
    if not isinstance(normalize, bool):
        raise ConfigError(f"{path}: {loss}.normalize must be true or false (got {normalize!r}).")
    names = _loss_names(raw, path, "CWD")
    loss_cfg = [{"type": "PPDetCWDFeatureLoss", "normalize": normalize, "tau": tau} for _ in names]
    if (sec.get("student_channels") is None) != (sec.get("teacher_channels") is None):
        raise ConfigError(f"{path}: {loss} needs both student_channels and teacher_channels (or neither, for "
                          f"maps of equal channels).")
    differ = False
    if sec.get("student_channels") is not None:
        s_ch = _per_level(sec["student_channels"], len(names), f"{path}: {loss}.student_channels")
        t_ch = _per_level(sec["teacher_channels"], len(names), f"{path}: {loss}.teacher_channels")
        differ = s_ch != t_ch
        for cfg, s, t in zip(loss_cfg, s_ch, t_ch):
            cfg.update(student_channels=s, teacher_channels=t)
    arch = student_cfg.get("architecture")
    what = (f"CWD (ppdet's CWDFeatureLoss: tau {tau:g}, normalize {str(normalize).lower()}, weight {weight:g}, "
            f"no tau^2)")
    if differ:
        what += (f", student channels {s_ch} to the teacher's {t_ch} by a 1x1 align convolution (trained with "
                 f"the student; ppdet leaves it untrained)")
    pairs = []
    if arch == "GFL":  # ppdet: CWD on each level's class-score map and on the neck level itself
        if differ:
            raise ConfigError(
                f"{path}: for GFL, ppdet's CWDDistillModel applies each level's CWDFeatureLoss, with its align "
                f"convolution from student_channels to teacher_channels, to the class-score map (num_classes "
                f"channels in both models) and to the neck output; with student_channels {s_ch} != "
                f"teacher_channels {t_ch} one of the two fails in ppdet. Set them equal (PaddleDetection's GFL "
                f"CWD config uses 80 and 80) and give both models the same neck channels.")
        for i, name in enumerate(names):
            ref = {"layer": "head.gfl_head_cls", "call": i}
            pairs.append({"name": name, "student": ref, "teacher": ref, "loss": loss_cfg[i], "weight": weight})
        for i in range(len(names)):
            pairs.append({"name": f"neck_f_{i}", "student": _neck(i), "teacher": _neck(i), "loss": loss_cfg[i],
                          "weight": weight})
        notes.append(f"{what}: class-score maps and neck outputs of levels 0..{len(names) - 1}")
    else:
        for i, name in enumerate(names):
            pairs.append({"name": name, "student": _neck(i), "teacher": _neck(i), "loss": loss_cfg[i],
                          "weight": weight})
        notes.append(f"{what}: neck outputs of levels 0..{len(names) - 1}")
    return pairs


def _keeps_boxes(student_cfg):
    ops = [next(iter(t)) for t in (student_cfg.get("TrainReader") or {}).get("batch_transforms") or []
           if isinstance(t, dict) and t]
    return "Gt2GFLTarget" not in ops


def fgd_pairs(raw, path, student_cfg, notes):
    loss = raw.get("distill_loss")
    if loss != "FGDFeatureLoss":
        raise ConfigError(f"{path}: slim_method FGD needs `distill_loss: FGDFeatureLoss` (got {loss!r}).")
    if not _keeps_boxes(student_cfg):
        raise ConfigError("FGD needs the ground-truth boxes in the training batch, but the student's "
                          "TrainReader ends with Gt2GFLTarget, which drops them; distil a GFL student with "
                          "slim_method LD or CWD.")
    sec = _section(raw, loss, path)
    names = _loss_names(raw, path, "FGD")
    s_ch = _per_level(sec.pop("student_channels", 256), len(names), f"{path}: FGDFeatureLoss.student_channels")
    t_ch = _per_level(sec.pop("teacher_channels", 256), len(names), f"{path}: FGDFeatureLoss.teacher_channels")
    allowed = {"temp", "alpha_fgd", "beta_fgd", "gamma_fgd", "lambda_fgd", "normalize", "loss_weight"}
    unknown = sorted(set(sec) - allowed)
    if unknown:
        raise ConfigError(f"{path}: FGDFeatureLoss has no argument(s) {unknown}; it takes student_channels, "
                          f"teacher_channels, {', '.join(sorted(allowed))}.")
    pairs = []
    for i, name in enumerate(names):
        align = None
        if s_ch[i] != t_ch[i]:
            align = {"type": "1x1conv", "in_channels": s_ch[i], "out_channels": t_ch[i]}
        pairs.append({"name": name, "student": _neck(i), "teacher": _neck(i),
                      "loss": dict(sec, type="FGDFeatureLoss", channels=t_ch[i]), "weight": 1.0, "align": align})
    notes.append(f"FGD on neck outputs of levels 0..{len(names) - 1} (student channels {s_ch}, teacher {t_ch})")
    return pairs


def _kl_settings(value, defaults, where):
    if isinstance(value, str) or value is None:
        return dict(defaults)
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a KnowledgeDistillationKLDivLoss section, got {value!r}")
    out = dict(defaults)
    out.update({k: v for k, v in value.items() if k in ("T", "loss_weight")})
    return out


def ld_pairs(raw, path, student_cfg, teacher_cfg, notes):
    """LD's three terms as pairs; the student's LDGFLHead trains as a GFLHead (same parameters)."""
    if student_cfg.get("architecture") != "GFL" or teacher_cfg.get("architecture") != "GFL":
        raise ConfigError(f"{path}: slim_method LD distils GFL detectors; the student is "
                          f"{student_cfg.get('architecture')} and the teacher {teacher_cfg.get('architecture')}.")
    student_cfg = copy.deepcopy(student_cfg)
    head_name, head = _head(student_cfg, "head")
    t_name, t_head = _head(teacher_cfg, "head")
    if head.get("dgqp_module") or t_head.get("dgqp_module"):
        raise ConfigError("LD reads the raw class scores of GFL heads; a head with dgqp_module (GFLv2) is not "
                          "supported.")
    base = {"T": 10, "loss_weight": 1.0}
    base.update({k: v for k, v in (student_cfg.get("KnowledgeDistillationKLDivLoss") or {}).items()
                 if k in ("T", "loss_weight")})
    settings = {term: _kl_settings(head.get(f"loss_{term}"), base, f"{head_name}.loss_{term}")
                for term in ("ld", "ld_vlr", "kd")}
    if head_name == "LDGFLHead":
        plain = {k: v for k, v in head.items() if k not in ("loss_ld", "loss_ld_vlr", "loss_kd")}
        student_cfg[student_cfg["architecture"]] = dict(student_cfg["GFL"], head="GFLHead")
        student_cfg["GFLHead"] = plain
        notes.append("the student's LDGFLHead trains as a GFLHead (same parameters; the LD terms are "
                     "distillation pairs)")
    strides = list(head.get("fpn_stride") or [8, 16, 32, 64, 128])
    t_strides = list(t_head.get("fpn_stride") or [8, 16, 32, 64, 128])
    if strides != t_strides or head.get("reg_max", 16) != t_head.get("reg_max", 16):
        raise ConfigError(f"LD compares the heads level by level and bin by bin: the student's fpn_stride "
                          f"{strides} / reg_max {head.get('reg_max', 16)} must equal the teacher's {t_strides} / "
                          f"{t_head.get('reg_max', 16)}.")
    targets = [t for t in (student_cfg.get("TrainReader") or {}).get("batch_transforms") or []
               if isinstance(t, dict) and "Gt2GFLTarget" in t]
    if not targets:
        raise ConfigError("LD needs the student's GFL targets: end the student config's "
                          "TrainReader.batch_transforms with Gt2GFLTarget (compute_vlr_region: true).")
    if not (targets[0]["Gt2GFLTarget"] or {}).get("compute_vlr_region"):
        raise ConfigError("LD's valuable-region term needs `compute_vlr_region: true` in the student config's "
                          "TrainReader Gt2GFLTarget (the slim config's TrainReader is not used: the student's "
                          "data settings come from -c). Add it there, or with -o "
                          "TrainReader.batch_transforms.<i>.Gt2GFLTarget.compute_vlr_region=true.")
    sources = ([{"layer": "head.gfl_head_cls", "call": i} for i in range(len(strides))]
               + [f"head.p{int(round(math.log2(int(s))))}_feat" for s in strides])
    pairs = [{"name": f"loss_{term}", "student": sources, "teacher": sources,
              "loss": {"type": "LDLoss", "term": term, "num_levels": len(strides), "T": s["T"],
                       "loss_weight": s["loss_weight"]}, "weight": 1.0}
             for term, s in settings.items()]
    notes.append("LD: " + ", ".join(f"loss_{t} (T {s['T']}, weight {s['loss_weight']})" for t, s in settings.items()))
    return pairs, student_cfg


# ----- PPYOLOEDistill ---------------------------------------------------------------------------------
PPYOLOE_ALPHA = 0.125  # PPYOLOEDistillModel.forward(inputs, alpha=0.125)
PPYOLOE_DEFAULTS = {
    "loss_weight": {"logits": 4.0, "feat": 1.0}, "logits_distill": True,
    "logits_loss_weight": {"class": 1.0, "iou": 2.5, "dfl": 0.5}, "logits_ld_distill": False,
    "logits_ld_params": {"weight": 20000, "T": 10}, "feat_distill": True, "feat_distiller": "fgd",
    "feat_distill_place": "neck_feats", "teacher_width_mult": 1.0, "student_width_mult": 0.75,
    "feat_out_channels": [768, 384, 192],
}
# DistillPPYOLOELoss's FGD settings (its FGDFeatureLoss arguments)
PPYOLOE_FGD = {"normalize": True, "alpha_fgd": 0.00001, "beta_fgd": 0.000005, "gamma_fgd": 0.00001,
               "lambda_fgd": 0.00000005}


def _named_section(cfg, value, default_name):
    """A head's injected section (`assigner: {name: X, ...}` or `assigner: X` naming a top-level section)."""
    if isinstance(value, dict):
        return value.get("name") or value.get("type") or default_name, value
    name = value if isinstance(value, str) else default_name
    return name, dict(cfg.get(name) or {})


def _ppyoloe_head(cfg, who, path):
    name, head = _head(cfg, "yolo_head")
    if name != "PPYOLOEHead":
        raise ConfigError(f"{path}: slim_method PPYOLOEDistill distils PP-YOLOE detectors, but the {who}'s "
                          f"{cfg.get('architecture')} has yolo_head {name!r}; it needs PPYOLOEHead (architecture "
                          f"PPYOLOE, or YOLOv3 with yolo_head: PPYOLOEHead as in ppyoloe_plus_crn.yml).")
    return head


def ppyoloe_pairs(raw, path, student_cfg, teacher_cfg, notes):
    """DistillPPYOLOELoss as pairs: `logits_loss` on the heads' per-level class and box maps, `feat_loss_i`
    on each level of feat_distill_place; each weighted by ppdet's alpha x its loss_weight, and the student's
    detection loss x alpha (PPYOLOEDistillModel: loss = alpha * (det + logits + feat)); the total is ppdet's.

    Label assignment: the logit terms use the teacher's task-aligned assignment after the static-assigner
    epochs (the student's own ATSS before), as ppdet's do; PPYOLOELogitsLoss computes it from the frozen
    eval-mode teacher's outputs and the batch's boxes. ppdet also hands that assignment to the student's
    detection loss; here the student's detection loss keeps its own assignment, because the student's forward
    (which computes its detection loss) runs before the teacher's in the distiller. Two other differences:
    the teacher runs in eval mode (ppdet's trainer leaves it in train mode: batch-statistics BatchNorm, whose
    running averages it keeps updating), and the align convolutions and MGD's generator train with the
    student (ppdet's optimizer never gets them)."""
    loss = raw.get("distill_loss")
    if loss != "DistillPPYOLOELoss":
        raise ConfigError(f"{path}: slim_method PPYOLOEDistill needs `distill_loss: DistillPPYOLOELoss` "
                          f"(got {loss!r}).")
    sec = _section(raw, loss, path)
    unknown = sorted(set(sec) - set(PPYOLOE_DEFAULTS))
    if unknown:
        raise ConfigError(f"{path}: DistillPPYOLOELoss has no argument(s) {unknown}; it takes "
                          f"{', '.join(PPYOLOE_DEFAULTS)}.")
    opts = copy.deepcopy(PPYOLOE_DEFAULTS)
    opts.update(copy.deepcopy(sec))
    weights = dict(PPYOLOE_DEFAULTS["loss_weight"], **(opts["loss_weight"] or {}))
    head = _ppyoloe_head(student_cfg, "student", path)
    t_head = _ppyoloe_head(teacher_cfg, "teacher", path)
    strides = [int(v) for v in head.get("fpn_strides") or (32, 16, 8)]
    reg = lambda h: tuple(h["reg_range"]) if h.get("reg_range") else (0, int(h.get("reg_max", 16)) + 1)
    if strides != [int(v) for v in t_head.get("fpn_strides") or (32, 16, 8)] or reg(head) != reg(t_head):
        raise ConfigError(f"{path}: PPYOLOEDistill compares the two heads cell by cell and bin by bin: the "
                          f"student's PPYOLOEHead fpn_strides {strides} / reg_max {reg(head)[1] - 1} must equal "
                          f"the teacher's {t_head.get('fpn_strides') or [32, 16, 8]} / {reg(t_head)[1] - 1}.")
    if head.get("reg_range"):
        raise ConfigError(f"{path}: PPYOLOEDistill with a PPYOLOEHead reg_range (PP-YOLOE-SOD) is not "
                          f"supported; ppdet's PP-YOLOE distillation is for the plain head.")
    pairs = []
    alpha = PPYOLOE_ALPHA
    if opts["logits_distill"] and float(weights["logits"]) > 0:
        lw = dict(PPYOLOE_DEFAULTS["logits_loss_weight"], **(opts["logits_loss_weight"] or {}))
        ld = dict(PPYOLOE_DEFAULTS["logits_ld_params"], **(opts["logits_ld_params"] or {}))
        _, static = _named_section(student_cfg, head.get("static_assigner", "ATSSAssigner"), "ATSSAssigner")
        _, tal = _named_section(student_cfg, head.get("assigner", "TaskAlignedAssigner"), "TaskAlignedAssigner")
        refs = ([f"yolo_head.pred_cls.{i}" for i in range(len(strides))]
                + [f"yolo_head.pred_reg.{i}" for i in range(len(strides))])
        pairs.append({"name": "logits_loss", "student": refs, "teacher": refs, "weight": alpha * float(weights["logits"]),
                      "loss": {"type": "PPYOLOELogitsLoss", "num_levels": len(strides), "fpn_strides": strides,
                               "reg_range": list(reg(head)),
                               "grid_cell_scale": float(head.get("grid_cell_scale", 5.0)),
                               "grid_cell_offset": float(head.get("grid_cell_offset", 0.5)),
                               "static_epochs": int(head.get("static_assigner_epoch", 4)),
                               "static_topk": int(static.get("topk", 9)), "topk": int(tal.get("topk", 13)),
                               "alpha": float(tal.get("alpha", 1.0)), "beta": float(tal.get("beta", 6.0)),
                               "class_weight": float(lw["class"]), "iou_weight": float(lw["iou"]),
                               "dfl_weight": float(lw["dfl"]), "ld": bool(opts["logits_ld_distill"]),
                               "ld_weight": float(ld["weight"]), "ld_T": float(ld["T"])}})
        notes.append(f"PPYOLOEDistill logits_loss: QFL x{lw['class']:g}, GIoU x{lw['iou']:g}, DFL x{lw['dfl']:g}"
                     + (f", KD (weight {ld['weight']:g}, T {ld['T']:g})" if opts["logits_ld_distill"] else "")
                     + f" between the heads, with the teacher's task-aligned assignment after "
                       f"{int(head.get('static_assigner_epoch', 4))} static-assigner epoch(s); weight "
                       f"{alpha:g} x {float(weights['logits']):g}")
    if opts["feat_distill"] and float(weights["feat"]) > 0:
        kind = str(opts["feat_distiller"])
        place = str(opts["feat_distill_place"])
        if kind not in ("cwd", "fgd", "pkd", "mgd", "mimic"):
            raise ConfigError(f"{path}: DistillPPYOLOELoss.feat_distiller must be one of cwd, fgd, pkd, mgd, mimic "
                              f"(got {kind!r}).")
        if place not in ("neck_feats", "backbone_feats"):
            raise ConfigError(f"{path}: DistillPPYOLOELoss.feat_distill_place must be neck_feats or backbone_feats "
                              f"(got {place!r}).")
        if kind == "fgd" and not _keeps_boxes(student_cfg):
            raise ConfigError("FGD needs the ground-truth boxes in the training batch; the student's TrainReader "
                              "drops them (Gt2GFLTarget).")
        out = opts["feat_out_channels"]
        if not isinstance(out, (list, tuple)) or not out:
            raise ConfigError(f"{path}: DistillPPYOLOELoss.feat_out_channels must list each level's channels "
                              f"before width_mult (e.g. [768, 384, 192]), got {out!r}.")
        t_ch = [int(c * float(opts["teacher_width_mult"])) for c in out]
        s_ch = [int(c * float(opts["student_width_mult"])) for c in out]
        layer = "neck" if place == "neck_feats" else "backbone"
        for i, (sc, tc) in enumerate(zip(s_ch, t_ch)):
            ref = {"layer": layer, "idx": i}
            pair = {"name": f"feat_loss_{i}", "student": ref, "teacher": ref, "weight": alpha * float(weights["feat"])}
            if kind == "fgd":
                pair["loss"] = dict(PPYOLOE_FGD, type="FGDFeatureLoss", channels=tc)
                pair["align"] = {"type": "1x1conv", "in_channels": sc, "out_channels": tc} if sc != tc else None
            else:
                pair["loss"] = {"type": "PPDetFeatureLoss", "kind": kind, "student_channels": sc,
                                "teacher_channels": tc}
                if kind == "pkd" and sc != tc:
                    pair["align"] = {"type": "1x1conv", "in_channels": sc, "out_channels": tc}
            pairs.append(pair)
        notes.append(f"PPYOLOEDistill feat_loss_0..{len(out) - 1}: {kind} on the {layer} outputs (student channels "
                     f"{s_ch}, teacher {t_ch}); weight {alpha:g} x {float(weights['feat']):g} each")
    if not pairs:
        raise ConfigError(f"{path}: DistillPPYOLOELoss with neither logits_distill nor feat_distill (or both "
                          f"loss weights 0) distils nothing.")
    student_cfg = copy.deepcopy(student_cfg)
    from .task import DET_LOSS_SCALE_KEY
    student_cfg[DET_LOSS_SCALE_KEY] = alpha
    notes.append(f"PPYOLOEDistill: the student's detection loss x{alpha:g}, as ppdet's PPYOLOEDistillModel "
                 f"scales the whole loss (alpha {alpha:g})")
    return pairs, student_cfg


# ----- loading ----------------------------------------------------------------------------------------
def load_qat(raw, path, student_cfg):
    """A `slim: QAT` config -> SlimConfig with no teacher: the student config with it merged (ppdet's
    load_config) and `quant:` set from QAT.quant_config."""
    from slim.distill.config import merge_dicts
    qat = raw.get("QAT")
    if not isinstance(qat, dict) or not isinstance(qat.get("quant_config"), dict):
        raise ConfigError(f"{path}: `slim: QAT` needs a `QAT:` section with `quant_config:` (a mapping of PaddleSlim's "
                          f"QAT settings, e.g. {{'weight_quantize_type': 'channel_wise_abs_max', "
                          f"'activation_quantize_type': 'moving_average_abs_max'}}), got {qat!r}.")
    unknown = sorted(set(qat) - {"quant_config", "print_model"})
    if unknown:
        raise ConfigError(f"{path}: QAT has no key(s) {unknown}; ppdet's QAT takes quant_config and print_model.")
    rest = {k: v for k, v in raw.items() if k not in ("slim", "QAT")}
    student = merge_dicts(rest, student_cfg)
    student["quant"] = dict(qat["quant_config"], print_model=bool(qat.get("print_model", False)))
    notes = [f"slim config {path} (slim: QAT): merged into the student config"
             + (f" ({', '.join(sorted(rest))})" if rest else "") + "; QAT.quant_config is its quant settings"]
    return SlimConfig(None, None, [], student, "QAT", notes)


def load(path, student_cfg):
    """A PaddleDetection slim config -> SlimConfig (teacher config, teacher weights, pairs, student config)."""
    raw = parse_yaml_with_bases(path)
    slim = raw.get("slim")
    if slim == "QAT":
        return load_qat(raw, path, student_cfg)
    if slim != "Distill":
        raise ConfigError(f"{path}: `slim: {slim}` is not supported; --slim_config reads PaddleDetection's "
                          f"`slim: Distill` and `slim: QAT` configs (pruning and PTQ are not supported).")
    method = raw.get("slim_method") or None
    loss_section = raw.get("distill_loss") if isinstance(raw.get("distill_loss"), str) else None
    teacher = {k: v for k, v in raw.items() if k not in METHOD_KEYS and k != loss_section}
    if not isinstance(teacher.get("architecture"), str):
        raise ConfigError(f"{path}: no `architecture:` after resolving `_BASE_`; the slim config must `_BASE_` "
                          f"the teacher's config (e.g. _BASE_: ['../../yolov3/yolov3_r34_270e_coco.yml']).")
    notes = []
    student = student_cfg
    if method is None:
        pairs = yolov3_pairs(raw, path, student_cfg)
        notes.append(f"DistillYOLOv3Loss on {len(pairs)} YOLOv3 output levels, weight {pairs[0]['weight']:g} each")
    elif method == "CWD":
        pairs = cwd_pairs(raw, path, student_cfg, notes)
    elif method == "FGD":
        pairs = fgd_pairs(raw, path, student_cfg, notes)
    elif method == "LD":
        pairs, student = ld_pairs(raw, path, student_cfg, teacher, notes)
    elif method == "PPYOLOEDistill":
        pairs, student = ppyoloe_pairs(raw, path, student_cfg, teacher, notes)
    else:
        raise ConfigError(f"{path}: slim_method {method!r} is not known; supported: {', '.join(SUPPORTED)}.")
    unused = [k for k in TRAINING_KEYS if k in teacher]
    if unused:
        notes.append(f"slim config {path}: not used (the student config -c gives them): {', '.join(unused)}")
    for key in unused:
        teacher.pop(key)
    schedule = _schedule(raw)
    if schedule is not None:
        for pair in pairs:
            pair["weight_schedule"] = schedule
        notes.append(f"weight_schedule of {raw.get('distill_loss')}: {schedule} (each of its terms)")
    return SlimConfig(teacher, raw.get("pretrain_weights"), pairs, student, method or "DistillYOLOv3Loss", notes,
                      _weight_origins(method, raw, path, pairs, student))
