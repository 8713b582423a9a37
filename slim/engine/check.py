"""`--check`: before the long run, a few minutes of measurement say whether the run can work (task-free; the
commands' glue, which knows configs and tasks, is slim/apps/check.py).

    python slim/distill/distill_train.py -t T.yml -c S.yml --teacher_pretrained T.pdparams --check
    python tools/train.py -c ppcls_distillation.yaml --check --check_samples 64 \
        --student_baseline output/alone/best_model

`CheckHook` runs when training would start (the trainer holds its data, models, distiller and optimizer) and
writes check.md and check.json into the run folder:

- teacher (check_teacher.py): the task metric of each frozen teacher on up to N val samples (spread over the val
  set) through the student's data pipeline, and through the teacher config's own where it differs; beside it, on
  the same samples, always predicting the most frequent class (chance) and a student-alone checkpoint
  (--student_baseline). A teacher no better than either is flagged as the likely cause of a bad result.
- balance: over BALANCE_STEPS batches at the starting weights (the optimizer never steps), each loss term's
  value and the norm of its gradient on the student's trainable parameters, as a ratio to the task loss's
  gradient norm. A distillation term above RATIO_HIGH or below RATIO_LOW is flagged with the weight that brings
  its ratio to 1 (weights scale gradients linearly) and where that weight is set.
- pairs: each pair's tensors (shapes, connector), whether the student side gets a gradient, and, when fp16 was
  asked for, whether a tensor exceeds fp16's range (65504).
- cost: the measured time and memory of a student step, a teacher forward and a distillation step (--analyse's
  measurement, slim/engine/analysis.py), the projected run time and the size a --teacher_cache would take.

Nothing of the run changes: BatchNorm statistics, random states, modes and gradients are put back.
With `then_train` and nothing flagged, training goes on; otherwise CheckFinished ends the command (exit 0 or 3).
"""
import contextlib
import math
import statistics
import time
from collections import OrderedDict

import numpy as np
import paddle

from slim.distill.adaptor import unwrap
from slim.distill.errors import SlimError
from . import env
from .analysis import MiB, STEP_LABELS, _Untouched, step_memory
from .check_report import CheckFinished, CheckReport
from .check_teacher import teacher_section
from .hooks import Hook, format_eta

FP16_MAX = 65504.0
RATIO_HIGH, RATIO_LOW = 10.0, 0.01
BALANCE_STEPS = 3
COST_REPEATS = 3  # step_memory runs; the median time is reported
DEFAULT_SAMPLES = 100


class CheckPlan:
    """What the command's glue knows and the engine does not (defaults fit a Distiller run).

    teachers(trainer) -> [(name, model)]: the frozen teachers to evaluate (default: the distiller's teacher).
    eval_cfgs: [(label, cfg)]: the val pipelines to evaluate them through (default: the student's config).
    differences: [(what, message, fix)]: config differences between teacher and student (each flagged).
    baseline: (path, build) or None: --student_baseline and a function that builds that model with its weights.
    distill_terms(trainer) -> set of the distillation terms' names (the others are the task loss).
    term_info(trainer) -> {term: (weight, where it is set)}.
    pair_rows(trainer, batch) -> [row dict] for runs without a Distiller (PaddleClas: pairs inside the model).
    teacher_tensors(trainer, args, kwargs) -> OrderedDict of what a teacher cache stores per batch, or None.
    eval_mode(model): a context in which the model's forward is its evaluation forward."""

    def __init__(self, samples=DEFAULT_SAMPLES, then_train=False, title="", teachers=None, eval_cfgs=None,
                 differences=(), baseline=None, distill_terms=None, term_info=None, pair_rows=None,
                 teacher_tensors=None, eval_mode=None):
        self.samples, self.then_train, self.title = int(samples), bool(then_train), title
        self.teachers = teachers or _distiller_teachers
        self.eval_cfgs, self.differences, self.baseline = eval_cfgs, list(differences), baseline
        self.distill_terms = distill_terms or _distiller_terms
        self.term_info = term_info or _distiller_term_info
        self.pair_rows = pair_rows
        self.teacher_tensors = teacher_tensors or _distiller_teacher_tensors
        self.eval_mode = eval_mode or contextlib.nullcontext


def _distiller_terms(trainer):
    return {p.name for p in trainer.distiller.pairs} if trainer.distiller is not None else set()


def _distiller_teachers(trainer):
    """[(name, model)] of the run's separate teachers, each built (one: "teacher"; several: their names)."""
    if trainer.distiller is None:
        return []
    trainer.distiller.ensure_teacher()
    return trainer.teacher_source.models()


def _distiller_term_info(trainer):
    d = trainer.distiller
    return {p.name: (p.weight, p.origin) for p in d.pairs} if d is not None else {}


def _distiller_teacher_tensors(trainer, args, kwargs):
    if trainer.distiller is None:
        return None
    return trainer.distiller.teacher_features(*args, **kwargs)


# ----- loss balance and pairs ------------------------------------------------------------------------------
def student_parameters(trainer):
    return [p for n, p in unwrap(trainer.student).named_parameters()
            if not p.stop_gradient and not n.startswith("loss_layers.")]


def step_terms(trainer, batch):
    """One training forward as the trainer computes it (fp32, the teacher run live): OrderedDict term -> tensor."""
    args, kwargs = trainer.task.model_inputs(batch, "train")
    if trainer.distiller is not None:
        out = trainer.distiller(*args, label=trainer.task.distill_label(batch), **kwargs)
        terms = OrderedDict(trainer.task_loss(out.student_out, batch))
        terms.update(out.losses)
        return terms
    return OrderedDict(trainer.task_loss(trainer.model(*args, **kwargs), batch))


def gradient_norm(value, params):
    if value.stop_gradient or not params:
        return 0.0
    grads = paddle.grad([value], params, retain_graph=True, allow_unused=True)
    total = sum(float((g.astype("float32") ** 2).sum()) for g in grads if g is not None)
    return math.sqrt(total)


@contextlib.contextmanager
def untouched(trainer):
    """Whatever a measuring step changes (BatchNorm statistics, random states, modes, gradients) is put back."""
    distiller = trainer.distiller
    params = student_parameters(trainer) + ([p for _, p in distiller.named_extra_parameters()] if distiller else [])
    layers = [unwrap(trainer.student)] + ([distiller.connectors, distiller.loss_layers] if distiller else [])
    with _Untouched(layers, params, frozen=[m for _, m in trainer.teacher_source.models()]):
        yield


def _where(origin, value):
    """How to set a weight: `-o key=value` for a config key path, else the place named."""
    if origin and all(part.replace("_", "").isalnum() for part in str(origin).split(".")):
        return f"-o {origin}={value:.3g} (or edit `{origin}` in the config)"
    return f"{origin}" if origin else "the term's weight in the config"


def balance_section(trainer, plan, report, batches):
    """Measure each term (values, gradient norms) over the batches; returns {term: gradient norm} (the pairs
    section reads whether each term reaches the student)."""
    params = student_parameters(trainer)
    values, norms, task_norms, distill = OrderedDict(), OrderedDict(), [], None
    for batch in batches:
        terms = step_terms(trainer, batch)
        if distill is None:  # after a first forward: a loss may name its terms only then
            distill = plan.distill_terms(trainer)
        task_terms = [v for k, v in terms.items() if k not in distill]
        if task_terms:
            task_norms.append(gradient_norm(paddle.add_n(task_terms), params))
        for name, value in terms.items():
            values.setdefault(name, []).append(float(value))
            norms.setdefault(name, []).append(gradient_norm(value, params))
    task_norm = float(np.mean(task_norms)) if task_norms else 0.0
    info = plan.term_info(trainer)
    rows, records = [], []
    for name in values:
        kind = "distillation" if name in distill else "task"
        value, norm = float(np.mean(values[name])), float(np.mean(norms[name]))
        ratio = norm / task_norm if task_norm > 0 else None
        weight, origin = info.get(name, (None, None))
        rows.append([name, kind, "" if weight is None else f"{weight:g}", f"{value:.4g}", f"{norm:.3g}",
                     "" if ratio is None else f"{ratio:.3g}"])
        records.append({"term": name, "kind": kind, "weight": weight, "value": value, "grad_norm": norm,
                        "ratio_to_task": ratio})
        if kind != "distillation" or ratio is None:
            continue
        if norm == 0:
            report.flag("balance", f"{name} gives the student's parameters no gradient (value {value:.4g}): it "
                                   f"cannot teach anything.", "see its pair below (the student side).")
        elif ratio > RATIO_HIGH or ratio < RATIO_LOW:
            how = "swamps" if ratio > RATIO_HIGH else "is too small beside"
            fix = (f"set its weight to about {weight / ratio:.3g} (now {weight:g}) to bring the ratio to 1: "
                   f"{_where(origin, weight / ratio)}" if weight else "scale its weight by 1/ratio")
            report.flag("balance", f"{name} {how} the task loss: its gradient on the student is {ratio:.3g}x the "
                                   f"task loss's (flagged above {RATIO_HIGH:g}x or below {RATIO_LOW:g}x).", fix)
    report.table("balance", ["term", "kind", "weight", "value", "grad norm", "/ task grad norm"], rows)
    report.note("balance", f"Mean over {len(batches)} batch(es) of the run's size at the starting weights; gradient "
                           f"norms on the student's {sum(int(p.size) for p in params):,} trainable parameters; a "
                           f"weight_schedule, if any, is not applied here (the configured weights).")
    if task_norm == 0:
        report.info("balance", "No task loss term with a gradient: ratios are not defined (distillation alone).")
    report.record("balance", {"task_grad_norm": task_norm, "terms": records})
    return {name: float(np.mean(norms[name])) for name in norms}


def _shapes(tensors):
    return " + ".join(str(list(t.shape)) for t in tensors)


def _max_abs(tensors):
    return max((float(t.astype("float32").abs().max()) for t in tensors if t.size), default=0.0)


def distiller_pair_rows(trainer):
    """Rows for the pairs of the distiller's last call (record_inputs)."""
    rows = []
    for pair in trainer.distiller.pairs:
        students, teachers = trainer.distiller.last_inputs.get(pair.name, ([], []))
        align = pair.align or {}
        connector = align.get("type", "none") + (" + bn" if align.get("bn") else "") if align else "none"
        rows.append({"name": pair.name, "loss": pair.loss["type"], "student": _shapes(students),
                     "teacher": _shapes(teachers), "connector": connector,
                     "student_trains": bool(students) and all(not t.stop_gradient for t in students),
                     "max_abs_student": _max_abs(students), "max_abs_teacher": _max_abs(teachers),
                     "student_source": ", ".join(str(s) for s in pair.student)})
    return rows


def pairs_section(trainer, plan, report, rows, term_norms, fp16):
    if not rows:
        report.note("pairs", "No distillation pairs.")
        return
    table = []
    for row in rows:
        norm = term_norms.get(row["name"])
        gets = row["student_trains"] and (norm is None or norm > 0)
        table.append([row["name"], row["loss"], row["student"], row["teacher"], row["connector"],
                      "yes" if gets else "NO", f"{row['max_abs_student']:.3g} / {row['max_abs_teacher']:.3g}"])
        if not gets:
            report.flag("pairs", f"The student side of {row['name']} ({row.get('student_source', '')}) receives no "
                                 f"gradient: its tensor does not depend on a trainable parameter (a frozen layer, or a "
                                 f"tensor detached or computed under no_grad), so the term trains nothing.",
                        "pair a layer of the student that trains (unfreeze it, or do not detach the tensor an "
                        "adaptor stores).")
        if fp16:
            for side in ("student", "teacher"):
                value = row[f"max_abs_{side}"]
                if value > FP16_MAX:
                    report.flag("pairs", f"The {side} tensor of {row['name']} reaches |x| = {value:.4g}, beyond "
                                         f"fp16's range ({FP16_MAX:g}): under --precision fp16 it becomes inf and the "
                                         f"term NaN.",
                                "train with --precision bf16 (float32's range) or fp32, or pair a tensor after a "
                                "normalisation layer (or add `align: {type: 1x1conv, bn: true}`).")
    report.table("pairs", ["pair", "loss", "student", "teacher", "connector", "student gets gradient",
                           "max |x| student / teacher"], table)
    report.record("pairs", rows)


# ----- cost -------------------------------------------------------------------------------------------------
def _human(nbytes):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024.0


def cost_section(trainer, plan, report, batch, batch_size, load_seconds):
    runs = [step_memory(trainer, batch) for _ in range(COST_REPEATS)]
    results, meter = runs[-1][0], runs[-1][1]
    seconds = {name: statistics.median(r[i][1]["seconds"] for r, _ in runs)
               for i, (name, used) in enumerate(results) if used is not None}
    rows = []
    for name, used in results:
        if used is None:
            rows.append([STEP_LABELS[name], "", "not measured"])
            continue
        rows.append([STEP_LABELS[name], f"{seconds[name]:.3f}",
                     f"{used['peak'] / MiB:.1f}" if used.get("peak") is not None else ""])
    rows.append(["data loading (one batch, this process)", f"{load_seconds:.3f}", ""])
    report.table("cost", ["step (batch %d per process)" % batch_size, "seconds (median of %d)" % COST_REPEATS,
                          "peak MiB above weights and gradients"], rows)
    step = seconds.get("distillation", seconds.get("student"))
    left = max(int(trainer.max_iters) - int(trainer.iter), 0)
    values = {"seconds": seconds, "memory": {n: u for n, u in results}, "data_loading_seconds": load_seconds,
              "iterations": left, "meter": meter.name}
    if step is not None:
        total = (step + load_seconds) * left
        values["projected_seconds"] = total
        text = (f"Projected time of the {left} iterations to run: about {format_eta(total)} "
                f"(({step:.3f} s step + {load_seconds:.3f} s loading) x {left}; evaluation and checkpoints not "
                f"included; memory measured with {meter.name}).")
        teacher_seconds = sum(v for k, v in seconds.items() if k.startswith("teacher"))  # one or several
        if teacher_seconds and "distillation" in seconds and "student" in seconds:
            cached = (seconds["student"] + load_seconds) * left
            text += (f" The teacher forward is {teacher_seconds:.3f} s of each step; with its outputs read from a "
                     f"--teacher_cache a step costs about a student step (about {format_eta(cached)} in all).")
        report.note("cost", text)
    args, kwargs = trainer.task.model_inputs(batch, "train")
    with paddle.no_grad():
        feats = plan.teacher_tensors(trainer, args, kwargs)
    if feats and trainer.distiller is None:
        report.note("cost", "The model runs its frozen teacher inside its own forward: the student step above "
                            "includes the teacher's forward.")
    if feats:
        opts = trainer.options
        size = np.dtype(getattr(opts, "teacher_cache_dtype", "float16") or "float16").itemsize
        topk = getattr(opts, "teacher_cache_topk", None)
        per_sample = 1
        for t in feats.values():
            shape = list(t.shape[1:])
            per_sample += (topk * (size + 4) + size if topk and len(shape) == 1 and shape[0] > topk
                           else int(np.prod(shape, dtype=np.int64)) * size)
        entries = left * batch_size * env.world_size()
        values["teacher_cache_bytes"] = per_sample * entries
        report.note("cost", f"A --teacher_cache of this run would hold {entries} entries of {_human(per_sample)} "
                            f"({', '.join(f'{n} {list(t.shape[1:])}' for n, t in feats.items())} per sample in "
                            f"{np.dtype(size == 2 and 'float16' or 'float32').name}): about "
                            f"{_human(per_sample * entries)}.")
    report.record("cost", values)


# ----- the hook -------------------------------------------------------------------------------------------
def stop_loader(stream):
    """Stop the training loader's read-ahead: its thread re-seeds numpy and random for each sample it reads, so
    while it runs, samples drawn here would not be reproducible. `stream.start_at` opens it again."""
    it = getattr(stream, "_iter", None)
    stream.close()  # worker processes, if any
    if it is not None and not getattr(it, "_workers", None) and hasattr(it, "_try_shutdown_all"):
        it._try_shutdown_all()  # the single-process loader's thread


def check_batches(stream, batch_size, count):
    """`count` training batches of the run's size (epoch 0's augmentation) and the mean seconds to load one; the
    random states are put back (drawing samples re-seeds numpy and random)."""
    state = env.rng_state()
    try:
        n = len(stream.dataset)
        batches, start = [], time.perf_counter()
        for b in range(count):
            batches.append(stream.collate_fn([stream.dataset[(0, (b * batch_size + i) % n)]
                                              for i in range(batch_size)]))
        seconds = (time.perf_counter() - start) / max(count, 1)
    finally:
        env.set_rng_state(state)
    return batches, seconds


def run_check(trainer, plan: CheckPlan) -> CheckReport:
    report = CheckReport(plan.title or trainer.task.run_name(trainer.cfg))
    batch_size = int(trainer.settings.get("batch_size") or 1)
    distiller = trainer.distiller
    holders = [h for h in (distiller, trainer.task_loss) if h is not None and hasattr(h, "set_step")]
    for holder in holders:
        holder.set_step(None)  # the configured weights (a schedule starts at its own first value in training)
    if distiller is not None:
        distiller.ensure_teacher()
    stop_loader(trainer.stream)
    batches, load_seconds = check_batches(trainer.stream, batch_size, BALANCE_STEPS)
    sections = [("teacher", lambda: teacher_section(trainer, plan, report))]
    norms = {}

    def balance_and_pairs():
        with untouched(trainer):
            if distiller is not None:
                distiller.train()
                distiller.record_inputs = True
            else:
                trainer.model.train()
            try:
                norms.update(balance_section(trainer, plan, report, batches))
                rows = (distiller_pair_rows(trainer) if distiller is not None else
                        plan.pair_rows(trainer, batches[-1]) if plan.pair_rows else [])
            finally:
                if distiller is not None:
                    distiller.record_inputs, distiller.last_inputs = False, {}
        fp16 = getattr(trainer.precision, "requested", "fp32") == "fp16"
        pairs_section(trainer, plan, report, rows, norms, fp16)

    sections += [("balance", balance_and_pairs),
                 ("cost", lambda: cost_section(trainer, plan, report, batches[0], batch_size, load_seconds))]
    for name, run in sections:
        try:
            run()
        except SlimError:
            raise
        except Exception as e:  # a measurement that fails is reported; the other sections still run
            report.flag(name, f"this part of the check failed: {type(e).__name__}: {e}",
                        "run the same command without --check to see where it fails.")
    return report


class CheckHook(Hook):
    """Runs the check before the first step; ends the command unless `then_train` and nothing is flagged."""

    def __init__(self, plan: CheckPlan):
        self.plan = plan
        self.report = None

    def before_train(self, trainer):
        start = time.perf_counter()
        self.report = run_check(trainer, self.plan)
        seconds = time.perf_counter() - start
        self.report.record("check_seconds", seconds)
        if env.is_main_process():
            paths = self.report.write(trainer.save_dir)
            for line in self.report.console_lines():
                trainer.log(line)
            trainer.log(f"check took {seconds:.1f} s; wrote {paths[0]} and {paths[1]}")
        if not self.plan.then_train or self.report.flagged:
            if self.plan.then_train:
                trainer.log("--check_then_train: the check flagged something; not training (fix it, or train "
                            "without --check_then_train)")
            raise CheckFinished(self.report)
        trainer.log("--check_then_train: nothing flagged; training starts")
        trainer.stream.start_at(trainer.iter)
