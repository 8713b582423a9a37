"""Two teachers against one: when does an ensemble of teachers help? (bench/seg_gain.py --teachers,
bench/cls_gain.py --teachers)

Two teachers of one config trained with different seeds (A: seed 0, B: seed 1), or given. For each student
seed s (all with --data_seed 0): the student alone, the student distilled from A, from B, and from both
(their logits combined: `ensemble: mean_prob` and `ensemble: mean_logit`, slim/distill/ensemble.py), with the
task's logit method (seg: CWD on logits, tau 4, x3, the best of the method table; cls: KD, T 4, x1). Every
distillation run reads its teachers' outputs from a teacher-output cache (one per teacher and run kind,
filled by seed 0). Each run keeps its best checkpoint by the validation metric; the table gives mean ± std
(range) over seeds and the gain over the student alone and over the better single teacher.
"""
import os
import shutil
import statistics

import yaml

from slim.apps import commands
from slim.apps.commands import PY
from .methods import ALONE, METRIC, _best_metric, _cache_counts

LOGIT_LOSS = {
    "seg": ("CWD on logits (tau=4, x3)", {"types": [{"type": "SegChannelwiseLoss", "tau": 4}], "coef": [3]}),
    "cls": ("KD (T=4, x1)", {"types": [{"type": "KLLoss", "temperature": 4}], "coef": [1]}),
}


def add_arguments(parser):
    """--teachers and --teachers_weights of bench/seg_gain.py and bench/cls_gain.py."""
    parser.add_argument("--teachers", action="store_true",
                        help="two teachers against one (slim/apps/experiments/ensemble.py): teachers of seeds 0 and "
                             "1, the student alone, distilled from each, and from both (mean_prob, mean_logit), "
                             "through teacher caches")
    parser.add_argument("--teachers_weights", nargs=2, default=None, metavar=("A", "B"),
                        help="--teachers: these two trained teachers instead of training them")


def train_teachers(out, teacher_config, flags, opts=(), log=print):
    """Teachers A (seed 0) and B (seed 1) of one config: their weights."""
    weights = []
    for name, seed in (("A", 0), ("B", 1)):
        run_dir = os.path.join(out, f"teacher_{name}")
        shutil.rmtree(run_dir, ignore_errors=True)
        commands.run([PY, "tools/train.py", "--config", teacher_config, "--save_dir", run_dir, "--seed", str(seed)]
                     + list(flags) + (["-o", *opts] if opts else []), os.path.join(out, f"teacher_{name}.log"),
                     echo=False)
        best = os.path.join(run_dir, "best_model", "model.pdparams")
        weights.append(best if os.path.isfile(best) else commands.last_checkpoint(run_dir))
        log(f"  teacher {name} (seed {seed}): {weights[-1]}")
    return weights


def teacher_metrics(task, out, teacher_config, weights, opts=()):
    """The teachers' own validation metric (tools/eval.py)."""
    import json
    found = []
    for name, w in zip("AB", weights):
        path = os.path.join(out, f"eval_teacher_{name}.json")
        commands.run([PY, "tools/eval.py", "--config", teacher_config, "--model_path", w, "--save_json", path]
                     + (["-o", *opts] if opts else []), os.path.join(out, f"eval_teacher_{name}.log"), echo=False)
        with open(path) as f:
            found.append(float(json.load(f)[METRIC[task]]))
    return found


def sweep(task, out, seeds, teacher_config, student_config, weights, common=(), opts=(), log=print):
    metric = METRIC[task]
    cfg_dir = os.path.join(out, "configs")
    os.makedirs(cfg_dir, exist_ok=True)
    method, loss = LOGIT_LOSS[task]
    rows, caches, times = {ALONE: []}, {}, {ALONE: []}
    opts = ["-o", *opts] if opts else []

    def config(name, extra):
        path = os.path.join(cfg_dir, f"{name}.yml")
        with open(path, "w") as f:
            yaml.safe_dump({"_base_": os.path.abspath(student_config), "distill_loss": dict(loss, **extra)}, f,
                           sort_keys=False)
        return path

    single = config("single", {})
    runs = [(f"{method} from teacher A", single, [weights[0]], "A"),
            (f"{method} from teacher B", single, [weights[1]], "B"),
            (f"{method} from A and B, ensemble: mean_prob", config("mean_prob", {"ensemble": "mean_prob"}), weights,
             "mean_prob"),
            (f"{method} from A and B, ensemble: mean_logit", config("mean_logit", {"ensemble": "mean_logit"}), weights,
             "mean_logit")]

    def run_one(name, seed, cfg, teacher_weights=(), cache=None):
        slug = "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()[:60]
        run_dir = os.path.join(out, f"seed{seed}", slug)
        shutil.rmtree(run_dir, ignore_errors=True)
        log_path = os.path.join(out, f"seed{seed}", f"{slug}.log")
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        flags = ["--seed", str(seed), "--data_seed", "0", "--do_eval", "--save_dir", run_dir] + list(common)
        if not teacher_weights:
            cmd = [PY, "tools/train.py", "-c", cfg]
        else:
            cmd = [PY, "slim/distill/distill_train.py", "-c", cfg, "--teacher_cache", os.path.join(out, "caches", cache)]
            for w in teacher_weights:
                cmd += ["-t", teacher_config, "--teacher_pretrained", w]
        seconds = commands.run(cmd + flags + opts, log_path, echo=False)
        rows.setdefault(name, []).append(_best_metric(run_dir, metric))
        times.setdefault(name, []).append(seconds)
        if teacher_weights:
            caches.setdefault(name, []).append(_cache_counts(log_path))
        log(f"  seed {seed} {name}: {metric} {rows[name][-1]:.4f} ({seconds:.0f} s)")

    for seed in range(seeds):
        run_one(ALONE, seed, student_config)
        for name, cfg, teacher_weights, cache in runs:
            run_one(name, seed, cfg, teacher_weights, cache)
    return {"rows": rows, "caches": caches, "times": times, "metric": metric, "single": [r[0] for r in runs[:2]]}


def table(result, title, teacher_values):
    rows, metric = result["rows"], result["metric"]
    alone = rows[ALONE]
    best_single = max(result["single"], key=lambda n: statistics.mean(rows[n]))

    def summary(values):
        mean = statistics.mean(values)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{mean:.4f} ± {std:.4f} ({min(values):.4f}-{max(values):.4f})"

    def gain(values, ref):
        per_seed = [v - a for v, a in zip(values, ref)]
        return f"{100 * statistics.mean(per_seed):+.2f} pts ({', '.join(f'{100 * g:+.2f}' for g in per_seed)})"

    lines = [title, "", f"Teachers' own val {metric}: A {teacher_values[0]:.4f}, B {teacher_values[1]:.4f}.", "",
             f"| run | {metric}, mean ± std (range) | gain over alone (per seed) | gain over the better single "
             f"teacher's student ({best_single.split(' from ')[1]}) | teacher caches: read / computed per run | "
             f"train time (s), median |", "| --- | --- | --- | --- | --- | --- |"]
    for name, values in rows.items():
        over_alone = "-" if name == ALONE else gain(values, alone)
        over_best = gain(values, rows[best_single]) if "A and B" in name else "-"
        counts = ", ".join(f"{r}/{c}" for r, c in result["caches"].get(name, [])) or "no teacher"
        lines.append(f"| {name} | {summary(values)} | {over_alone} | {over_best} | {counts} | "
                     f"{statistics.median(result['times'][name]):.0f} |")
    return "\n".join(lines)
