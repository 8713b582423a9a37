"""`--check` on the training commands: the glue between the configs a user gave and slim/engine/check.py.

    python slim/distill/distill_train.py -t T.yml -c S.yml --teacher_pretrained T.pdparams --check
    python slim/distill/distill_train.py -t T.yml -c S.yml ... --check_then_train   # trains if nothing is flagged
    python tools/train.py -c S.yml --slim_config distill.yml --check                  # PaddleDetection's form
    python tools/train.py -c ppcls_distill.yaml --check --check_samples 64 --student_baseline output/alone/best_model

Flags: --check (check, write check.md / check.json into the run folder, do not train), --check_then_train (train
afterwards when nothing is flagged), --check_samples N (val samples for the teacher's metric, default 100),
--student_baseline W (a student-alone checkpoint the teacher must beat). Exit status: 0 nothing flagged, 3 something
flagged, 2 bad input.

What this module knows and the engine does not: where each config family keeps its data pipelines (to list the
normalisation, input-size, class-count and label-name differences between teacher and student, and to evaluate the
teacher through its own config's val pipeline), which models of a PaddleClas DistillationModel are teachers, which of
its loss terms use the labels alone, and how to build a --student_baseline model.
"""
import contextlib
import copy
import os

from slim.distill.adaptor import unwrap
from slim.distill.errors import ConfigError
from slim.engine.check import DEFAULT_SAMPLES, CheckHook, CheckPlan
from .launch import positive_int

# defaults of the Normalize ops whose configs may leave mean/std out (PaddleSeg's; this package's classification)
_NORMALIZE_DEFAULTS = {"seg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
                       "cls": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}


def add_check_flags(parser):
    p = parser
    p.add_argument("--check", action="store_true",
                   help="check the run instead of training (a few minutes): the teacher on the student's data, the "
                        "balance of the loss terms, the pairs, the cost; writes check.md and check.json into the run "
                        "folder; exit 0 when nothing is flagged, 3 when something is")
    p.add_argument("--check_then_train", action="store_true",
                   help="--check first, then train when nothing is flagged (exit 3 without training otherwise)")
    p.add_argument("--check_samples", type=positive_int, default=DEFAULT_SAMPLES, metavar="N",
                   help=f"val samples the check evaluates the teacher on (default {DEFAULT_SAMPLES})")
    p.add_argument("--student_baseline", default=None, metavar="WEIGHTS",
                   help="a student trained alone (its weights): the check flags a teacher that is not better")
    return p


def wanted(args):
    return bool(getattr(args, "check", False) or getattr(args, "check_then_train", False))


def _validate(args):
    baseline = getattr(args, "student_baseline", None)
    if baseline and not wanted(args):
        raise ConfigError("--student_baseline is read by the check: add --check (or --check_then_train).")
    if baseline and not (os.path.exists(baseline) or os.path.exists(baseline + ".pdparams")):
        raise ConfigError(f"--student_baseline {baseline}: no such file or folder. Give the weights of the student "
                          f"trained alone (e.g. output/student/best_model/model.pdparams).")


# ----- data pipelines of each config family ----------------------------------------------------------------
def _op(entry):
    """A transform entry as (name, arguments): `{type: X, ...}`, `{X: {...}}` or `X`."""
    if isinstance(entry, str):
        return entry, {}
    if isinstance(entry, dict) and "type" in entry:
        return str(entry["type"]), {k: v for k, v in entry.items() if k != "type"}
    if isinstance(entry, dict) and len(entry) == 1:
        (name, args), = entry.items()
        return str(name), dict(args or {})
    return str(entry), {}


def pipeline(task, cfg, mode):
    """[(op name, arguments)] of the config's train or val pipeline, or None when the config has none."""
    if task.name in ("seg", "cls"):
        ops = (cfg.get(f"{mode}_dataset") or {}).get("transforms")
    elif task.name == "det":
        reader = cfg.get("TrainReader" if mode == "train" else "EvalReader")
        ops = None if not reader else list(reader.get("sample_transforms") or []) + list(
            reader.get("batch_transforms") or [])
    elif task.name == "ppcls":
        section = ((cfg.get("DataLoader") or {}).get("Train" if mode == "train" else "Eval") or {})
        ops = (section.get("dataset") or {}).get("transform_ops")
    else:
        ops = None
    if ops is None:
        return None
    out = []
    for entry in ops:
        name, args = _op(entry)
        if name == "Normalize" and task.name in _NORMALIZE_DEFAULTS:
            args = dict(_NORMALIZE_DEFAULTS[task.name], **args)
        out.append((name, args))
    return out


def _is_normalisation(name):
    return "Normaliz" in name and "Box" not in name


def _is_size(name):
    return any(k in name for k in ("Resize", "Crop", "Pad")) and "Box" not in name


def _show(ops):
    return "; ".join(f"{n}{args}" if args else n for n, args in ops) or "none"


def pipeline_differences(task, cfg, teacher_cfg):
    """[(what, message, fix)]: normalisation, input size, class count and label names that differ between the
    student's config and the teacher's (the teacher sees the student's data in distillation)."""
    out = []
    for mode in ("train", "val"):
        mine, theirs = pipeline(task, cfg, mode), pipeline(task, teacher_cfg, mode)
        if mine is None or theirs is None:
            continue
        for what, keep, fix in (
                ("normalisation", _is_normalisation,
                 "give the student config the teacher's normalisation (the teacher sees the student's tensors), or "
                 "retrain the teacher with the student's"),
                ("input size", _is_size,
                 "train the student at the teacher's input size (its crop / resize), or check that the teacher "
                 "works at the student's (the table above: its metric through each pipeline)")):
            a, b = [op for op in mine if keep(op[0])], [op for op in theirs if keep(op[0])]
            if a != b:
                out.append((f"{what} ({mode} pipeline)",
                            f"the student's config has {_show(a)}, the teacher's {_show(b)}; in distillation the "
                            f"teacher is fed the student's.", fix))
    s_classes, t_classes = task.num_classes(cfg), task.num_classes(teacher_cfg)
    if s_classes is not None and t_classes is not None and int(s_classes) != int(t_classes):
        out.append(("class count", f"the student predicts {s_classes} classes and the teacher {t_classes}.",
                    "give both configs the same number of classes (and the same class order)."))
    names = getattr(task, "class_names", None)
    if names is not None:
        try:
            mine, theirs = names(cfg), names(teacher_cfg, required=False)
        except ConfigError:
            mine = theirs = None
        if mine is not None and theirs is not None and list(mine) != list(theirs):
            out.append(("label names", f"the student's classes are {list(mine)}, the teacher's {list(theirs)}.",
                        "use one label list (same names, same order) in both configs."))
    return out


def with_teacher_val_pipeline(task, cfg, teacher_cfg):
    """The student's config with the teacher config's val pipeline (same val samples), or None when there is no
    other pipeline to try."""
    mine, theirs = pipeline(task, cfg, "val"), pipeline(task, teacher_cfg, "val")
    if theirs is None or mine == theirs:
        return None
    out = copy.deepcopy(cfg)
    if task.name in ("seg", "cls"):
        for key in ("transforms", "color"):
            if key in (teacher_cfg.get("val_dataset") or {}):
                out["val_dataset"][key] = copy.deepcopy(teacher_cfg["val_dataset"][key])
    elif task.name == "det":
        out["EvalReader"] = copy.deepcopy(teacher_cfg["EvalReader"])
    else:
        return None
    return out


@contextlib.contextmanager
def full_forward(model):
    """Evaluate a teacher whose forward was cut at its head (ppdet's feature path, slim/tasks/det/features.py)
    with its own full eval forward."""
    patched = getattr(model, "_slim_feature_path", False) and "forward" in vars(model)
    saved = vars(model).pop("forward") if patched else None
    try:
        yield model
    finally:
        if patched:
            model.forward = saved


def _load_baseline(task, cfg, path, build):
    def load():
        model = build()
        with task.logging_to(lambda line: None):
            task.load_weights(model, path, "--student_baseline", key="--student_baseline")
        return model
    return path, load


# ----- the plans of the three commands ----------------------------------------------------------------------
def distill_hooks(args, task, cfg, teacher_cfg):
    """[CheckHook] for distill_train.py (and tools/train.py --slim_config) when --check is asked for, else []."""
    _validate(args)
    if not wanted(args):
        return []
    eval_cfgs = [("student's", cfg)]
    differences = []
    if teacher_cfg is not None and teacher_cfg is not cfg:
        own = with_teacher_val_pipeline(task, cfg, teacher_cfg)
        if own is not None:
            eval_cfgs.append(("teacher config's", own))
        differences = pipeline_differences(task, cfg, teacher_cfg)
    baseline = None
    if args.student_baseline:
        baseline = _load_baseline(task, cfg, args.student_baseline, lambda: task.build_model(cfg))
    title = task.run_name(cfg) + (f" <- {task.run_name(teacher_cfg)}" if teacher_cfg is not None else "")
    plan = CheckPlan(samples=args.check_samples, then_train=args.check_then_train and not args.check, title=title,
                     eval_cfgs=eval_cfgs, differences=differences, baseline=baseline, eval_mode=full_forward)
    return [CheckHook(plan)]


def train_hooks(args, task, cfg):
    """tools/train.py without a teacher: the loss terms and the cost."""
    return distill_hooks(args, task, cfg, None)


def ppcls_hooks(args, task, cfg):
    """PaddleClas configs: a DistillationModel's frozen models are the teachers; its Loss.Train entries on the
    labels alone (CELoss, DistillationGTCELoss) are the task loss, the others distillation terms."""
    _validate(args)
    if not wanted(args):
        return []
    from slim.tasks.ppcls import arch as ppcls_arch

    def distillation_model(trainer):
        model = unwrap(trainer.student)
        return model if isinstance(model, ppcls_arch.DistillationModel) else None

    def teachers(trainer):
        model = distillation_model(trainer)
        return [(name, model.sub(name)) for name in model.frozen_names()] if model is not None else []

    def distill_terms(trainer):
        return {k for k, loss in trainer.task_loss.entry_of.items() if not loss.ground_truth}

    def term_info(trainer):
        return {k: (loss.weight, loss.origin) for k, loss in trainer.task_loss.entry_of.items()}

    def teacher_tensors(trainer, args_, kwargs):
        model = distillation_model(trainer)
        return model.teacher_features(*args_) if model is not None and model.frozen_names() else None

    def pair_rows(trainer, batch):
        from slim.engine.check import _max_abs, _shapes
        args_, kwargs = trainer.task.model_inputs(batch, "train")
        out = trainer.model(*args_, **kwargs)
        trainer.task_loss(out, batch)  # names the terms of each entry
        rows = []
        for loss in trainer.task_loss.losses:
            if loss.ground_truth:
                continue
            terms = [k for k, owner in trainer.task_loss.entry_of.items() if owner is loss]
            for idx, (a, b) in enumerate(loss.model_name_pairs):
                s, t = loss._inputs(out, a, b) if hasattr(loss, "_inputs") else (loss.pick(out, a), loss.pick(out, b))
                s, t = (list(s) if isinstance(s, (list, tuple)) else [s]), (list(t) if isinstance(t, (list, tuple))
                                                                            else [t])
                name = terms[idx] if len(terms) == len(loss.model_name_pairs) else ", ".join(terms)
                rows.append({"name": name, "loss": type(loss).__name__, "student": f"{a} " + _shapes(s),
                             "teacher": f"{b} " + _shapes(t), "connector": "in the loss" if list(loss.parameters())
                             else "none", "student_trains": all(not x.stop_gradient for x in s),
                             "max_abs_student": _max_abs(s), "max_abs_teacher": _max_abs(t), "student_source": a})
        return rows

    baseline = None
    if args.student_baseline:
        def build():
            name = task.infer_model_name(cfg)
            spec = next(s for s in task.specs(cfg) if s.name == name)
            return task._build_one(spec)
        baseline = _load_baseline(task, cfg, args.student_baseline, build)
    plan = CheckPlan(samples=args.check_samples, then_train=args.check_then_train and not args.check,
                     title=task.run_name(cfg), teachers=teachers, baseline=baseline, distill_terms=distill_terms,
                     term_info=term_info, pair_rows=pair_rows, teacher_tensors=teacher_tensors)
    return [CheckHook(plan)]
