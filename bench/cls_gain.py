"""Does distillation help a small classifier? Teacher, student alone, KD, KD + frozen shared head, over seeds.

    python bench/cls_gain.py --seeds 3 [--out output/bench/cls_gain] [--per_class 100] [--iters 3000] [--one_teacher]

Data: the MNIST-5k file (`tools/prepare_data.py mnist --per_class 100`): at most 100 images per class and
split, 1000 train / 1000 val (--per_class 0: all of it, 4000 / 1000). Configs (configs/cls/): teacher
convnet_teacher_mnist.yml, student convnet_student_mnist.yml (alone: CE; KD: its `loss` and
`distill_loss`), KD + frozen head convnet_student_mnist_head_fixed.yml (the same plus
`head_from_teacher: true` and `embedding_projection: true`), pointed at the prepared folder with -o.

For each seed s: train the teacher (seed s; with --one_teacher, seed 0's teacher serves every seed), the
student alone, KD and KD + frozen head (seed s), all with the package's own commands, the same data and
iterations; tools/eval.py then measures the weights of the last iteration (no checkpoint is picked on the
validation set). Prints a markdown table of mean ± standard deviation (range) over seeds of top-1 and
recall@1 of feature matching (queries and gallery from the same model; and the student's queries
against the teacher's gallery, possible only when the student embeds into the teacher's space), the share
of the teacher-student top-1 gap each distilled student closes, and the wall time of each kind of run
(the machine's load adds noise to it).
"""
import argparse
import os
import shutil
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from slim.apps import commands  # noqa: E402
os.environ.setdefault("OMP_NUM_THREADS", "2")

from slim.apps.experiments import cls as experiment  # noqa: E402
from slim.apps.experiments import ensemble  # noqa: E402


def summary(values):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mean = statistics.mean(values)
    if len(values) == 1:
        return f"{mean:.4f}"
    return f"{mean:.4f} ± {statistics.stdev(values):.4f} ({min(values):.4f}-{max(values):.4f})"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", default="output/bench/cls_gain")
    p.add_argument("--per_class", type=int, default=experiment.PER_CLASS,
                   help=f"images per class and split (default {experiment.PER_CLASS}: 1000 train / 1000 val; "
                        f"0: all of MNIST-5k, 4000 / 1000)")
    p.add_argument("--iters", type=int, default=experiment.ITERS,
                   help=f"iterations of every run (default {experiment.ITERS}; 0: the configs' own)")
    p.add_argument("--one_teacher", action="store_true", help="train the teacher once (seed 0) for every seed")
    p.add_argument("--teacher_config", default=experiment.CONFIGS["teacher"])
    p.add_argument("--student_config", default=experiment.CONFIGS["student"])
    p.add_argument("--head_fixed_config", default=experiment.CONFIGS["head_fixed"])
    p.add_argument("--methods", action="store_true",
                   help="compare distillation methods instead (slim/apps/experiments/methods.py): one teacher, "
                        "the student alone, KD, KD + logit standardisation, DIST, DKD, the best of them + PKD, "
                        "each seed reading the teacher's outputs from a teacher cache; best checkpoint by val top-1")
    p.add_argument("--teacher_weights", default=None, help="--methods: this trained teacher instead of training one")
    ensemble.add_arguments(p)
    args = p.parse_args(argv)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    t_start = time.time()
    data_dir = experiment.prepare(os.path.join(out, "prepare.log"), args.per_class, echo=False)
    opts = experiment.data_opts(data_dir)
    if args.methods:
        return compare_methods(args, out, opts)
    if args.teachers:
        return compare_teachers(args, out, opts)
    configs = {"teacher": args.teacher_config, "student": args.student_config, "head_fixed": args.head_fixed_config}
    extra = ["--iters", str(args.iters)] if args.iters else []
    per_seed, teacher_weights = [], None
    for seed in range(args.seeds):
        t0 = time.time()
        seed_dir = os.path.join(out, f"seed{seed}")
        if os.path.isdir(os.path.join(seed_dir, "runs")):
            shutil.rmtree(os.path.join(seed_dir, "runs"))  # a fresh run for this seed
        results = experiment.run_seed(seed_dir, seed, configs, extra, log_iters=500, echo=False,
                                      teacher_weights=teacher_weights, opts=opts)
        if args.one_teacher and teacher_weights is None:
            teacher_weights = results["teacher"]["weights"]
        per_seed.append(results)
        line = ", ".join(f"{name} {r['top1']:.4f}/{r['recall_at_1']:.4f}" for name, r in results.items())
        print(f"seed {seed} ({time.time() - t0:.0f} s), top-1/recall@1: {line}", flush=True)

    names = [name for name, _ in experiment.RUNS]
    closed = [experiment.gap_closed(r) or {} for r in per_seed]  # per seed: {distilled run: share of the gap}
    schedule = f"{args.iters} iterations per run" if args.iters else "the configs' iterations"
    lines = [f"MNIST ({data_dir}: {experiment.split_sizes(data_dir)}), {schedule}, {args.seeds} seed(s)"
             + (", one teacher (seed 0) for every seed" if args.one_teacher else ", a teacher per seed")
             + "; weights of the last iteration; mean ± std (range)", "",
             "| model | parameters (trained) | top-1 | recall@1 (feature matching) | recall@1 vs teacher gallery "
             "| top-1 gap closed | train time (s) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name in names:
        rows = [r[name] for r in per_seed]
        if name == "teacher" and args.one_teacher:
            rows = rows[:1]
        first = rows[0]
        params = f"{first['params']:,}" + (f" ({first['trained_params']:,})"
                                           if first["trained_params"] != first["params"] else "")
        gap = summary([c.get(name) for c in closed]) if name in ("KD", "KD + frozen head") else ""
        times = [r["train_time_s"] for r in rows if r.get("train_time_s") is not None]
        wall = f"{statistics.mean(times):.0f}" if times else "-"
        cross = summary([r.get("cross_recall_at_1") for r in rows]) if name != "teacher" else ""
        lines.append(f"| {name} | {params} | {summary([r['top1'] for r in rows])} | "
                     f"{summary([r['recall_at_1'] for r in rows])} | {cross} | {gap} | {wall} |")
    commands.save_results(out, "\n".join(lines), {"per_seed": per_seed, "args": vars(args)}, "bench/cls_gain.py", argv,
                          t_start)
    return 0


def compare_methods(args, out, opts):
    from slim.apps.experiments import methods
    out = os.path.join(out, "methods")
    os.makedirs(out, exist_ok=True)
    extra = ["--iters", str(args.iters)] if args.iters else []
    teacher = args.teacher_weights
    if teacher is None:
        teacher_dir = os.path.join(out, "teacher")
        shutil.rmtree(teacher_dir, ignore_errors=True)
        commands.run([sys.executable, "tools/train.py", "--config", args.teacher_config, "--save_dir", teacher_dir,
                      "--seed", "0", "--log_iters", "500", "--save_interval", "100000"] + extra + ["-o", *opts],
                     os.path.join(out, "teacher.log"), echo=False)
        teacher = commands.last_checkpoint(teacher_dir)
    common = extra + ["--eval_interval", "250", "--log_iters", "500", "--save_interval", "100000"]
    result = methods.sweep("cls", out, args.seeds, args.teacher_config, args.student_config, teacher, common, opts,
                           log=lambda line: print(line, file=sys.stderr, flush=True))
    table = methods.table(result, f"MNIST ({args.per_class} images per class and split), {args.seeds} seeds "
                                  f"(--seed s, --data_seed 0), one teacher ({args.teacher_config}, {teacher}), "
                                  f"student {args.student_config}, {args.iters or 'the configs'} iterations; best "
                                  f"checkpoint by val top-1 of each run; CPU {os.environ.get('OMP_NUM_THREADS', '?')} "
                                  f"threads")
    methods.save(out, result, table)


def compare_teachers(args, out, opts):
    from slim.apps.experiments import methods
    out = os.path.join(out, "teachers")
    os.makedirs(out, exist_ok=True)
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    extra = ["--iters", str(args.iters)] if args.iters else []
    weights = args.teachers_weights or ensemble.train_teachers(
        out, args.teacher_config, extra + ["--log_iters", "500", "--save_interval", "100000"], opts, log=say)
    values = ensemble.teacher_metrics("cls", out, args.teacher_config, weights, opts)
    common = extra + ["--eval_interval", "250", "--log_iters", "500", "--save_interval", "100000"]
    result = ensemble.sweep("cls", out, args.seeds, args.teacher_config, args.student_config, weights, common, opts,
                            log=say)
    table = ensemble.table(result, f"MNIST ({args.per_class} images per class and split), {args.seeds} seeds (--seed s, "
                                   f"--data_seed 0), teachers A and B ({args.teacher_config}, seeds 0 and 1), student "
                                   f"{args.student_config}, {args.iters or 'the configs'} iterations; best checkpoint "
                                   f"by val top-1 of each run; CPU {os.environ.get('OMP_NUM_THREADS', '?')} threads",
                           values)
    methods.save(out, result, table)


if __name__ == "__main__":
    sys.exit(commands.main_guard(main))
