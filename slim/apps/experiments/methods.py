"""Which distillation method to pick: the methods side by side on one pair, several seeds (bench/seg_gain.py
--methods, bench/cls_gain.py --methods).

One teacher (given, or trained once with seed 0). For each seed s: the student alone and the student
distilled with each logit method, all with --seed s and --data_seed 0 (the same sample order and
augmentations for every run, so runs differ by the method and the student's initialisation), then the best
logit method by mean metric plus one feature method (PKD). Each distillation run reads the teacher's
outputs from a teacher-output cache (one per set of teacher tensors, filled by the first run that needs it)
instead of running the teacher. Each run keeps its best checkpoint by the validation metric (--do_eval);
the table reports its metric, mean ± standard deviation (range) over seeds, and the gain over the student
alone per seed.
"""
import json
import os
import shutil
import statistics

import yaml

from slim.apps import commands
from slim.apps.commands import PY

# (row name, distill_loss) per task; weights are the tutorial's (seg: KL x3) or the demo's (cls: KL T=4 x1),
# and the other methods keep that weight, with their papers' default parameters.
LOGIT_METHODS = {
    "seg": [
        ("KD (KL, T=1, x3: the tutorial)", {"types": [{"type": "KLLoss"}], "coef": [3]}),
        ("KD + logit standardisation (T=1, x3)", {"types": [{"type": "KLLoss", "logit_standardization": True}],
                                                  "coef": [3]}),
        ("DIST (tau=1, beta=gamma=1, x3)", {"types": [{"type": "DISTLoss"}], "coef": [3]}),
        ("CWD on logits (tau=4, x3)", {"types": [{"type": "SegChannelwiseLoss", "tau": 4}], "coef": [3]}),
    ],
    "cls": [
        ("KD (KL, T=4, x1: the demo)", {"types": [{"type": "KLLoss", "temperature": 4}], "coef": [1]}),
        ("KD + logit standardisation (T=4, x1)",
         {"types": [{"type": "KLLoss", "temperature": 4, "logit_standardization": True}], "coef": [1]}),
        ("DIST (tau=1, beta=gamma=1, x1)", {"types": [{"type": "DISTLoss"}], "coef": [1]}),
        ("DKD (alpha=1, beta=8, T=4, x1)", {"types": [{"type": "DKDLoss", "alpha": 1, "beta": 8, "temperature": 4}],
                                             "coef": [1]}),
    ],
}
# one feature pair per task (PKD: maps standardised per channel, so no scale to tune), added to the best logit
# method; the layers are the ones tools/list_layers.py --suggest picks for these pairs
FEATURE_METHODS = {
    "seg": ("PKD on lraspp_head.conv_ups.0 (x1)",
            [{"name": "pkd_head_s8", "student": "lraspp_head.conv_ups.0", "teacher": "lraspp_head.conv_ups.0",
              "loss": {"type": "PKDLoss"}, "weight": 1.0}]),
    "cls": ("PKD on backbone.features -> features.17 (1x1 connector, x1)",
            [{"name": "pkd_s4", "student": "backbone.features", "teacher": "backbone.features.17",
              "loss": {"type": "PKDLoss"}, "weight": 1.0, "align": {"type": "1x1conv"}}]),
}
METRIC = {"seg": "mIoU", "cls": "top1"}
ALONE = "student alone"


def _config(path, base, distill_loss, distill=None):
    data = {"_base_": os.path.abspath(base), "distill_loss": distill_loss}
    data["distill"] = distill or []
    with open(path, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    return path


def _best_metric(run_dir, metric):
    with open(os.path.join(run_dir, "best_model", "metrics.json")) as f:
        return float(json.load(f)[metric])


def _cache_counts(log_path):
    import re
    with open(log_path) as f:
        found = re.findall(r"teacher cache \S+: (\d+) sample\(s\) read, (\d+) computed", f.read())
    return tuple(int(x) for x in found[-1]) if found else None


def sweep(task, out, seeds, teacher_config, student_config, teacher_weights, common=(), opts=(), log=print):
    """Run the sweep; returns {"rows": {name: [metric per seed]}, "caches": {name: [(read, computed)]},
    "best_logit": name}. `common`: flags of every run (iterations, eval interval); `opts`: -o overrides."""
    metric = METRIC[task]
    cfg_dir = os.path.join(out, "configs")
    os.makedirs(cfg_dir, exist_ok=True)
    rows, caches, times = {ALONE: []}, {}, {ALONE: []}
    opts = ["-o", *opts] if opts else []

    def run_one(name, seed, config, cache=None):
        slug = "".join(c if c.isalnum() else "_" for c in name.split(" (")[0]).strip("_").lower()
        run_dir = os.path.join(out, f"seed{seed}", slug)
        shutil.rmtree(run_dir, ignore_errors=True)
        log_path = os.path.join(out, f"seed{seed}", f"{slug}.log")
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        flags = ["--seed", str(seed), "--data_seed", "0", "--do_eval", "--save_dir", run_dir] + list(common)
        if cache is None:
            cmd = [PY, "tools/train.py", "-c", student_config]
        else:
            cmd = [PY, "slim/distill/distill_train.py", "-t", teacher_config, "-c", config, "--teacher_pretrained",
                   teacher_weights, "--teacher_cache", os.path.join(out, "caches", cache)]
        seconds = commands.run(cmd + flags + opts, log_path, echo=False)
        rows.setdefault(name, []).append(_best_metric(run_dir, metric))
        times.setdefault(name, []).append(seconds)
        if cache is not None:
            caches.setdefault(name, []).append(_cache_counts(log_path))
        log(f"  seed {seed} {name}: {metric} {rows[name][-1]:.4f} ({seconds:.0f} s)")

    methods = []
    for i, (name, loss) in enumerate(LOGIT_METHODS[task]):
        methods.append((name, _config(os.path.join(cfg_dir, f"logit{i}.yml"), student_config, loss), "logits"))
    for seed in range(seeds):
        run_one(ALONE, seed, student_config)
        for name, config, cache in methods:
            run_one(name, seed, config, cache)
    logit_names = [m[0] for m in methods]
    best = max(logit_names, key=lambda n: statistics.mean(rows[n]))
    feature_name, pairs = FEATURE_METHODS[task]
    name = f"{best.split(' (')[0]} + {feature_name}"
    loss = dict(LOGIT_METHODS[task])[best]
    config = _config(os.path.join(cfg_dir, "feature.yml"), student_config, loss, pairs)
    for seed in range(seeds):
        run_one(name, seed, config, "logits_features")
    return {"rows": rows, "caches": caches, "times": times, "best_logit": best, "metric": metric}


def table(result, title):
    rows, metric = result["rows"], result["metric"]
    alone = rows[ALONE]

    def summary(values):
        mean = statistics.mean(values)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{mean:.4f} ± {std:.4f} ({min(values):.4f}-{max(values):.4f})"

    lines = [title, "", f"| method | {metric}, mean ± std (range) | gain over alone, mean (per seed) | "
                        f"teacher cache: samples read / computed per run | train time (s), median |",
             "| --- | --- | --- | --- | --- |"]
    for name, values in rows.items():
        if name == ALONE:
            gain = "-"
        else:
            per_seed = [v - a for v, a in zip(values, alone)]
            gain = f"{100 * statistics.mean(per_seed):+.2f} pts ({', '.join(f'{100 * g:+.2f}' for g in per_seed)})"
        counts = ", ".join(f"{r}/{c}" for r, c in result["caches"].get(name, [])) or "no teacher"
        lines.append(f"| {name} | {summary(values)} | {gain} | {counts} | "
                     f"{statistics.median(result['times'][name]):.0f} |")
    return "\n".join(lines)


def save(out, result, table):
    """Print the table and keep it, with the raw figures, in out/results.md and out/results.json."""
    commands.save_results(out, table, result)
