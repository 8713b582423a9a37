"""`--check`, the teacher on the student's data: its task metric on val samples spread over the val set, beside
always predicting the most frequent class (chance) and a student-alone checkpoint (slim/engine/check.py runs it).

    counts = class_counts(task, SampleSubset(val_set, 100))
    chance = task.evaluate(ConstantClassModel(teacher, counts), SampleSubset(val_set, 100), cfg)

Chance is measured with the task's own metric: a model that predicts the most frequent ground-truth class of the
samples (of the pixels, for dense labels) everywhere. A teacher that closes less than CHANCE_SHARE of the distance
from that score to a perfect 1 is at chance (on a hundred samples a random model's top-1 varies around chance by a few
points: binomial, 0.03 at 10 classes); for a task whose labels are not class indices (detection) chance is 0, what a
model that finds nothing scores.
"""
from collections import OrderedDict

import numpy as np
import paddle

from slim.distill.errors import ConfigError, SlimError
from .check_report import CheckReport

CHANCE_SHARE = 0.1
MARGIN = 0.01  # scores closer than this are "the same"


class SampleSubset:
    """`count` samples of `dataset`, spread evenly over it (val sets are often sorted by class). Per-sample
    attributes (lists or arrays as long as the dataset: labels, records, samples) are indexed the same way."""

    def __init__(self, dataset, count):
        n = len(dataset)
        count = max(1, min(int(count), n))
        self.indices = sorted(set(np.linspace(0, n - 1, count).round().astype(int).tolist()))
        self.dataset = dataset

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.dataset[self.indices[i]]

    def __getattr__(self, name):
        if name in ("dataset", "indices"):
            raise AttributeError(name)
        value = getattr(self.dataset, name)
        if isinstance(value, (list, tuple, np.ndarray)) and not isinstance(value, str) \
                and len(value) == len(self.dataset):
            picked = [value[i] for i in self.indices]
            return np.asarray(picked) if isinstance(value, np.ndarray) else picked
        return value


_FLOATS = (paddle.float32, paddle.float16, paddle.float64, paddle.bfloat16)


def _replace_scores(out, pick):
    """`out` with its class-score tensor (the first float tensor of 2+ axes; classes on axis 1) replaced by a
    one-hot score of the class `pick(number of classes)` everywhere; None when there is no such tensor."""
    if isinstance(out, paddle.Tensor):
        if out.ndim < 2 or out.dtype not in _FLOATS:
            return None
        scores = np.zeros(out.shape, dtype="float32")
        scores[:, pick(out.shape[1])] = 1.0
        return paddle.to_tensor(scores)
    if isinstance(out, (list, tuple)):
        for i, item in enumerate(out):
            replaced = _replace_scores(item, pick)
            if replaced is not None:
                return type(out)(list(out[:i]) + [replaced] + list(out[i + 1:]))
        return None
    if isinstance(out, dict):
        keys = (["logits"] if "logits" in out else []) + [k for k in out if k != "logits"]
        for key in keys:
            replaced = _replace_scores(out[key], pick)
            if replaced is not None:
                return dict(out, **{key: replaced})
    return None


class ConstantClassModel(paddle.nn.Layer):
    """Predicts one class for every sample (every pixel): the most frequent of `class_counts` among the classes
    the model scores (`chosen` once called). Its output is the model's with the class scores replaced by that
    class's one-hot; the model runs once per input shape, for the output's layout."""

    def __init__(self, model, class_counts):
        super().__init__()
        self._model = [model]  # not a sublayer: this wrapper's modes must not reach a frozen teacher
        self.counts = np.asarray(class_counts)
        self.chosen = None
        self._layouts = {}
        self.training = False

    def _pick(self, num_classes):
        self.chosen = int(np.argmax(self.counts[:num_classes]))
        return self.chosen

    def forward(self, *inputs):
        key = tuple(tuple(x.shape) for x in inputs if isinstance(x, paddle.Tensor))
        if key not in self._layouts:
            with paddle.no_grad():
                self._layouts[key] = self._model[0](*inputs)
        out = _replace_scores(self._layouts[key], self._pick)
        if out is None:
            raise SlimError("the model's output has no class-score tensor to replace")
        return out


def class_counts(task, dataset):
    """How often each ground-truth class occurs in the samples (pixels, for dense labels), or None when the
    task's labels are not class indices."""
    collate = task.collate_fn("val")
    counts = None
    for i in range(len(dataset)):
        batch = collate([dataset[i]]) if collate else dataset[i]
        task.model_inputs(batch, "val")  # raises a sample's deferred read error
        label = task.distill_label(batch)
        if not isinstance(label, paddle.Tensor) or label.dtype not in (paddle.int32, paddle.int64):
            return None
        values = label.numpy().reshape(-1)
        values = values[(values >= 0) & (values < 100000)]
        counts = np.bincount(values) if counts is None else _add_counts(counts, np.bincount(values))
    return counts if counts is not None and counts.sum() else None


def _add_counts(a, b):
    n = max(len(a), len(b))
    return np.pad(a, (0, n - len(a))) + np.pad(b, (0, n - len(b)))


def evaluate_metric(task, model, dataset, cfg):
    """The task's primary metric of `model` (eval mode, no gradients) on `dataset`; its log lines are kept quiet."""
    was_training = model.training
    model.eval()
    try:
        with paddle.no_grad():
            metrics = task.evaluate(model, dataset, cfg, log=lambda line: None)
    finally:
        if was_training:
            model.train()
    return float(metrics[task.primary_metric])


def teacher_section(trainer, plan, report: CheckReport):
    """The teacher section of the report (plan: a check.CheckPlan)."""
    task, metric = trainer.task, trainer.task.primary_metric
    teachers = plan.teachers(trainer)
    if not teachers:
        report.note("teacher", "No frozen teacher in this run: nothing to evaluate.")
        return
    eval_cfgs = plan.eval_cfgs or [("student's", trainer.cfg)]
    rows, scores = [], OrderedDict()
    chance = baseline = None
    for index, (label, cfg) in enumerate(eval_cfgs):
        try:
            dataset = SampleSubset(task.build_dataset(cfg, "val"), plan.samples)
        except ConfigError as e:  # e.g. no val_dataset: the other sections still run
            report.info("teacher", f"The teacher was not evaluated through the {label} pipeline: {e}")
            if index:
                continue
            return
        for name, model in teachers:
            with plan.eval_mode(model):
                scores[(name, label)] = evaluate_metric(task, model, dataset, cfg)
            rows.append([name, f"{label} pipeline", len(dataset), f"{scores[(name, label)]:.4f}"])
        if index:
            continue
        counts = class_counts(task, dataset)
        if counts is not None:
            constant = ConstantClassModel(teachers[0][1], counts)
            with plan.eval_mode(teachers[0][1]):
                chance = evaluate_metric(task, constant, dataset, cfg)
            rows.append([f"always class {constant.chosen} (the most frequent: chance)", f"{label} pipeline",
                         len(dataset), f"{chance:.4f}"])
        if plan.baseline is not None:
            path, build = plan.baseline
            baseline = evaluate_metric(task, build(), dataset, cfg)
            rows.append([f"student alone ({path})", f"{label} pipeline", len(dataset), f"{baseline:.4f}"])
    report.table("teacher", ["model", "data", "samples", metric], rows)
    first = eval_cfgs[0][0]
    report.record("teacher", {"metric": metric, "chance": chance, "student_baseline": baseline,
                              "scores": [{"model": n, "pipeline": l, metric: v} for (n, l), v in scores.items()]})
    floor = chance if chance is not None else 0.0
    threshold = floor + CHANCE_SHARE * (1.0 - floor)
    for name, _ in teachers:
        value = scores[(name, first)]
        if value < threshold:
            what = (f"always predicting the most frequent class ({chance:.4f})" if chance is not None
                    else "a model that predicts nothing (0)")
            report.flag("teacher", f"The {name} scores {metric} {value:.4f} on the student's val samples, no better "
                                   f"than {what} (below {threshold:.4f}, {CHANCE_SHARE:.0%} of the way from it to a "
                                   f"perfect 1): it is the likely cause of a bad distilled result.",
                        f"check that the teacher weights are the trained ones (e.g. its best_model/model.pdparams) "
                        f"and that the log says every tensor loaded; that its classes (count and order) are the "
                        f"student's; that the student's normalisation and input size are those the teacher was "
                        f"trained with.")
        if baseline is not None and value <= baseline:
            report.flag("teacher", f"The {name} ({metric} {value:.4f}) is not better than the student alone "
                                   f"({baseline:.4f}): distilling from it can only pull the student down.",
                        "train the teacher longer or pick a stronger one; then distil.")
        for label, _ in eval_cfgs[1:]:
            own = scores[(name, label)]
            if own > value + MARGIN:
                report.info("teacher", f"The {name} scores {own:.4f} through its own config's pipeline and "
                                       f"{value:.4f} through the student's, which is what it sees in distillation.")
    for what, message, fix in plan.differences:
        report.flag("teacher", f"{what}: {message}", fix)
