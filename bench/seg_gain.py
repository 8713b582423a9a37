"""Does distillation help? Teacher, student alone and distilled student, over several seeds.

    python bench/seg_gain.py --seeds 3 [--teacher_config T.yml --student_config S.yml] [--out DIR]

For each seed s: train the teacher (seed s), the student alone (seed s) and the student distilled from
that teacher (seed s), all with the package's own commands, the same data and iterations; each run
keeps its best checkpoint by validation mIoU (`--do_eval`, as the PaddleSeg tutorial reports), which
tools/eval.py then measures. Prints mean, standard deviation and range over seeds, and wall times.
Default pair: the demo's (configs/seg/demo/).
"""
import argparse
import json
import os
import statistics
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from slim.apps import commands  # noqa: E402
from slim.apps.commands import PY  # noqa: E402
from slim.apps.experiments import ensemble  # noqa: E402


def run(cmd, log):
    return commands.run(cmd, log, echo=False)


def evaluate(cfg, weights, out_json, log):
    run([PY, "tools/eval.py", "--config", cfg, "--model_path", weights, "--save_json", out_json], log)
    with open(out_json) as f:
        return json.load(f)


def summary(values):
    mean = statistics.mean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.4f} ± {std:.4f} ({min(values):.4f}-{max(values):.4f})"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--teacher_config", default="configs/seg/demo/teacher.yml")
    p.add_argument("--student_config", default="configs/seg/demo/student.yml")
    p.add_argument("--out", default="output/bench/seg_gain")
    p.add_argument("--teacher_eval_interval", type=int, default=100)
    p.add_argument("--student_eval_interval", type=int, default=25)
    p.add_argument("--methods", action="store_true",
                   help="compare distillation methods instead (slim/apps/experiments/methods.py): one teacher, "
                        "the student alone, KD, KD + logit standardisation, DIST, CWD on logits, the best of "
                        "them + PKD, each seed reading the teacher's outputs from a teacher cache")
    p.add_argument("--teacher_weights", default=None, help="--methods: this trained teacher instead of training one")
    ensemble.add_arguments(p)
    args = p.parse_args()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    run([PY, "tools/prepare_data.py", "nuclei", "--out", "data/nuclei"], os.path.join(out, "prepare.log"))
    if args.methods:
        return compare_methods(args, out)
    if args.teachers:
        return compare_teachers(args, out)

    rows = {"teacher": [], "student alone": [], "distilled": []}
    nucleus = {k: [] for k in rows}
    times = {k: [] for k in rows}
    for seed in range(args.seeds):
        runs = {k: os.path.join(out, f"seed{seed}", k.replace(" ", "_")) for k in rows}
        for path in runs.values():
            if os.path.isdir(path):
                shutil.rmtree(path)
        common = ["--seed", str(seed), "--do_eval", "--log_iters", "1000", "--save_interval", "100000"]
        logs = os.path.join(out, f"seed{seed}")
        os.makedirs(logs, exist_ok=True)
        times["teacher"].append(run(
            [PY, "tools/train.py", "--config", args.teacher_config, "--save_dir", runs["teacher"],
             "--eval_interval", str(args.teacher_eval_interval)] + common, os.path.join(logs, "teacher.log")))
        teacher_best = os.path.join(runs["teacher"], "best_model", "model.pdparams")
        times["student alone"].append(run(
            [PY, "tools/train.py", "--config", args.student_config, "--save_dir", runs["student alone"],
             "--eval_interval", str(args.student_eval_interval)] + common, os.path.join(logs, "student.log")))
        times["distilled"].append(run(
            [PY, "slim/distill/distill_train.py", "--teacher_config", args.teacher_config, "--student_config",
             args.student_config, "--teacher_pretrained", teacher_best, "--save_dir", runs["distilled"],
             "--eval_interval", str(args.student_eval_interval)] + common, os.path.join(logs, "distill.log")))
        for name, cfg in (("teacher", args.teacher_config), ("student alone", args.student_config),
                          ("distilled", args.student_config)):
            m = evaluate(cfg, os.path.join(runs[name], "best_model", "model.pdparams"),
                         os.path.join(logs, f"eval_{name.replace(' ', '_')}.json"),
                         os.path.join(logs, f"eval_{name.replace(' ', '_')}.log"))
            rows[name].append(m["mIoU"])
            nucleus[name].append(m["class_IoU"][1])
        print(f"seed {seed}: " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in rows.items()), file=sys.stderr, flush=True)

    gains = [d - a for d, a in zip(rows["distilled"], rows["student alone"])]
    lines = [f"Nuclei segmentation, {args.seeds} seeds, teacher {args.teacher_config}, student "
             f"{args.student_config}; best checkpoint by val mIoU of each run; CPU "
             f"{os.environ.get('OMP_NUM_THREADS', '?')} threads", "",
             "| model | mIoU, mean ± std (range) | nucleus IoU, mean ± std (range) | train time (s), median |",
             "| --- | --- | --- | --- |"]
    for name in rows:
        lines.append(f"| {name} | {summary(rows[name])} | {summary(nucleus[name])} | "
                     f"{statistics.median(times[name]):.0f} |")
    lines += ["", f"distilled - alone, per seed: {', '.join(f'{g:+.4f}' for g in gains)}; "
              f"mean {statistics.mean(gains):+.4f}"]
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"mIoU": rows, "nucleus_IoU": nucleus, "train_time_s": times}, f, indent=1)


def compare_methods(args, out):
    from slim.apps.experiments import methods
    out = os.path.join(out, "methods")
    os.makedirs(out, exist_ok=True)
    teacher = args.teacher_weights
    if teacher is None:
        teacher_dir = os.path.join(out, "teacher")
        shutil.rmtree(teacher_dir, ignore_errors=True)
        run([PY, "tools/train.py", "--config", args.teacher_config, "--save_dir", teacher_dir, "--seed", "0",
             "--do_eval", "--eval_interval", str(args.teacher_eval_interval), "--log_iters", "1000",
             "--save_interval", "100000"], os.path.join(out, "teacher.log"))
        teacher = os.path.join(teacher_dir, "best_model", "model.pdparams")
    common = ["--eval_interval", str(args.student_eval_interval), "--log_iters", "1000", "--save_interval", "100000"]
    result = methods.sweep("seg", out, args.seeds, args.teacher_config, args.student_config, teacher, common,
                           log=lambda line: print(line, file=sys.stderr, flush=True))
    table = methods.table(result, f"Nuclei segmentation, {args.seeds} seeds (--seed s, --data_seed 0), one teacher "
                                  f"({args.teacher_config}, {teacher}), student {args.student_config}; best "
                                  f"checkpoint by val mIoU of each run; CPU {os.environ.get('OMP_NUM_THREADS', '?')} "
                                  f"threads")
    methods.save(out, result, table)


def compare_teachers(args, out):
    from slim.apps.experiments import methods
    out = os.path.join(out, "teachers")
    os.makedirs(out, exist_ok=True)
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    weights = args.teachers_weights or ensemble.train_teachers(
        out, args.teacher_config, ["--do_eval", "--eval_interval", str(args.teacher_eval_interval), "--log_iters",
                                   "1000", "--save_interval", "100000"], log=say)
    values = ensemble.teacher_metrics("seg", out, args.teacher_config, weights)
    common = ["--eval_interval", str(args.student_eval_interval), "--log_iters", "1000", "--save_interval", "100000"]
    result = ensemble.sweep("seg", out, args.seeds, args.teacher_config, args.student_config, weights, common,
                            log=say)
    table = ensemble.table(result, f"Nuclei segmentation, {args.seeds} seeds (--seed s, --data_seed 0), teachers A and B "
                                   f"({args.teacher_config}, seeds 0 and 1), student {args.student_config}; best "
                                   f"checkpoint by val mIoU of each run; CPU {os.environ.get('OMP_NUM_THREADS', '?')} "
                                   f"threads", values)
    methods.save(out, result, table)


if __name__ == "__main__":
    sys.exit(commands.main_guard(main))
