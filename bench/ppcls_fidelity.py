"""Does a PaddleClas config give PaddleClas's result here? The quick-start distillation run by PaddleClas and by this
package, seed by seed, from the same teacher weights.

    python bench/ppcls_fidelity.py --paddleclas /path/to/PaddleClas [--seeds 0 1 2] [--epochs 3] [--batch_size 32]
        [--teacher_epochs 10] [--teacher_arch ResNet50_vd] [--teacher_here] [--modes train eval]
        [--out output/bench/ppcls_fidelity] [--reuse_teacher] [--rerun_threads 2] [--same_batches --per_class 32]

PaddleClas runs from the user's checkout (its tools/train.py, in a subprocess, with this Python; its imports
beyond paddle, e.g. easydict, must be importable: PYTHONPATH=... works); this package runs its own tools/train.py on
the same yaml files, read from that checkout:
ppcls/configs/quick_start/professional/ResNet50_vd_CIFAR100.yaml (teacher) and
R50_vd_distill_MV3_large_x1_0_CIFAR100.yaml (the MobileNetV3 student learns from the frozen teacher's soft labels).
The same `-o` overrides go to both: MNIST in ImageNetDataset layout (tools/prepare_data.py mnist --per_class 100:
1000 train / 1000 val, 28 px images cropped to 32), class_num 10, Global.epochs, batch size, Global.seed, cpu, no
loader workers, one evaluation at the end (Global.eval_interval = the epochs), RandCropImage scale [0.6, 1.0] (the
default [0.08, 1] leaves a 3-epoch teacher near chance), teacher lr 0.01; the student keeps its config's lr
(Cosine 0.04, warmup_epoch 5, which both clip to the epochs). Changes needed for PaddleClas to run: the student's
ImageNet weights (pretrained: True) cannot be downloaded offline (False for both), and PaddleClas's quick start
stops at its first evaluation with its Eval loss DistillationGTCELoss, so Loss.Eval is CELoss for both.

The teacher: PaddleClas trains it once, for --teacher_epochs (seed: the first of --seeds), and every student of
every seed distils from that file (its last weights). A 3-epoch ResNet50_vd teacher reaches only about 0.3 top-1
here, from which neither student learns anything in 3 epochs, hence 10 epochs by default. --teacher_here also
trains it with this package (same seed, another random stream: not paired). For each seed s, both distil the
student with seed s; this package once per --modes entry: `train` is Arch.frozen_mode train (the frozen teacher in
train mode, as PaddleClas runs it), `eval` this package's default. Reported: the top-1 on the 1000 val images of
each run's final weights, per seed and the mean, and the difference of each student to PaddleClas's.
--rerun_threads N runs PaddleClas's student a second time with N threads (the same config, seed and draws, only
the order of float sums differs): how far PaddleClas lands from itself, the scale against which a difference
between the two frameworks is read.

--same_batches (with --per_class 32: 10 iterations of batch 32; --reuse_teacher takes the teacher a former run left
in --out) feeds both identical batches instead: one epoch, no shuffle, ResizeImage in place of the random crop and
flip, the student's dropout off, the frozen teacher in train mode here too. Both seed paddle before building the
models in the same order, so the student starts from the same weights: the table gives, per seed, the largest
difference between PaddleClas's logged mean loss so far (5 decimals) and the same mean of this package's losses,
and both final top-1s. Random draws aside, this is the whole training step compared.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("OMP_NUM_THREADS", "2")

from slim.apps import commands  # noqa: E402
from slim.apps.commands import PY  # noqa: E402

TEACHER = "ppcls/configs/quick_start/professional/ResNet50_vd_CIFAR100.yaml"
STUDENT = "ppcls/configs/quick_start/professional/R50_vd_distill_MV3_large_x1_0_CIFAR100.yaml"
SHOW = ("[Eval][Epoch", "Avg]", "[EVAL]", "error", "Error")
PADDLECLAS_TOP1 = re.compile(r"\[Eval\]\[Epoch \d+\]\[Avg\].*?top1: ([0-9.]+)")
OWN_TOP1 = re.compile(r"\[EVAL\] #Images: \d+ top1(?: \(\w+\))?: ([0-9.]+)")


def common_opts(data, epochs, batch_size, seed):
    modes = (("Train", "train"), ("Eval", "val"))
    opts = [f"DataLoader.{mode}.dataset.{key}={data}/{suffix}" for mode, split in modes
            for key, suffix in (("image_root", ""), ("cls_label_path", f"{split}_list.txt"))]
    return opts + [f"Global.epochs={epochs}", f"Global.eval_interval={epochs}", f"Global.save_interval={epochs}",
                   f"Global.seed={seed}", "Global.device=cpu", f"DataLoader.Train.sampler.batch_size={batch_size}",
                   "DataLoader.Train.loader.num_workers=0", "DataLoader.Eval.loader.num_workers=0",
                   "DataLoader.Train.dataset.transform_ops.1.RandCropImage.scale=[0.6,1.0]"]


def teacher_opts(out, arch):
    return [f"Arch.name={arch}", "Arch.class_num=10", "Optimizer.lr.learning_rate=0.01", f"Global.output_dir={out}"]


def student_opts(out, teacher, arch):
    # a Python dict literal: PaddleClas reads -o values with eval(), this package with yaml
    return [f"Arch.models.0.Teacher.name={arch}", "Arch.models.0.Teacher.class_num=10",
            "Arch.models.1.Student.class_num=10",
            "Arch.models.1.Student.pretrained=False", f"Arch.models.0.Teacher.pretrained={teacher}",
            "Loss.Eval.0={'CELoss': {'weight': 1.0}}", f"Global.output_dir={out}"]


def dash_o(opts):
    """-o before each KEY=VALUE: PaddleClas's parser takes one value per -o."""
    return [a for opt in opts for a in ("-o", opt)]


def last_top1(path, pattern):
    with open(path, errors="replace") as f:
        found = pattern.findall(f.read())
    return float(found[-1]) if found else None


def paddleclas_commit(path, given):
    if given:
        return given
    try:
        return subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout; give --paddleclas_commit)"


def mean(values):
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else None


def fmt(value):
    return "-" if value is None else f"{value:.4f}"


def table(rows, modes, rerun_threads=0):
    """Per seed and on the mean: PaddleClas's student, this package's (per frozen mode), and with --rerun_threads
    PaddleClas's again at another thread count; each against PaddleClas's."""
    again = [f"again_{rerun_threads}"] if rerun_threads else []
    keys = [*modes, *again]
    names = {**{m: f"here, frozen_mode {m}" for m in modes},
             **{a: f"PaddleClas again, {rerun_threads} threads" for a in again}}
    head = ["seed", "student PaddleClas", *[f"student {names[k]}" for k in keys],
            *[f"{names[k]} - PaddleClas" for k in keys]]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]

    def line(label, r):
        diffs = [None if r.get(k) is None or r["paddleclas"] is None else r[k] - r["paddleclas"] for k in keys]
        cells = [label, fmt(r["paddleclas"]), *[fmt(r.get(k)) for k in keys],
                 *[("-" if d is None else f"{d:+.4f}") for d in diffs]]
        return "| " + " | ".join(cells) + " |"

    for seed, r in rows:
        lines.append(line(str(seed), r))
    if len(rows) > 1:
        lines.append(line(f"mean of {len(rows)}", {k: mean([r.get(k) for _, r in rows])
                                                    for k in ("paddleclas", *keys)}))
    return "\n".join(lines)


SAME_BATCHES = ["DataLoader.Train.sampler.shuffle=False", "Arch.models.1.Student.dropout_prob=0.0",
                "DataLoader.Train.dataset.transform_ops.1={'ResizeImage': {'size': 32}}",
                "DataLoader.Train.dataset.transform_ops.2={'ResizeImage': {'size': 32}}", "Global.print_batch_step=1"]
PADDLECLAS_LOSS = re.compile(r"\[Train\]\[Epoch 1/1\]\[Iter: (\d+)/\d+\].*?CELoss_Student_Teacher: ([0-9.]+)")


def running_means(paddleclas_log, history):
    """PaddleClas logs the mean loss of the epoch so far (5 decimals); this package each iteration's loss."""
    with open(paddleclas_log, errors="replace") as f:
        theirs = {int(i): float(v) for i, v in PADDLECLAS_LOSS.findall(f.read())}
    ours = []
    with open(history) as f:
        for row in map(json.loads, f):
            if "Train/loss" in row:
                ours.append(row["Train/loss"])
    means = [sum(ours[:k + 1]) / (k + 1) for k in range(len(ours))]
    return [(k, theirs.get(k), means[k] if k < len(means) else None) for k in sorted(theirs)]


def same_batches(args, pc, data, teacher, out, logs):
    """Both on identical batches (no shuffle, ResizeImage instead of the random crop and flip, the student's
    dropout off), one epoch: same init (both seed paddle before building the models in the same order), same
    frozen teacher in train mode: the losses should agree at every iteration."""
    rows = []
    for seed in args.seeds:
        base = common_opts(data, 1, args.batch_size, seed) + SAME_BATCHES
        run = os.path.join(out, f"same_batches_seed{seed}")
        pc_log = os.path.join(logs, f"same_batches_seed{seed}_paddleclas.log")
        commands.run([PY, os.path.join(pc, "tools/train.py"), "-c", os.path.join(pc, STUDENT),
                      *dash_o(base + student_opts(f"{run}/paddleclas", teacher, args.teacher_arch))], pc_log,
                     show=SHOW)
        log = os.path.join(logs, f"same_batches_seed{seed}_here.log")
        commands.run([PY, "tools/train.py", "-c", os.path.join(pc, STUDENT),
                      *dash_o(base + student_opts(f"{run}/here", teacher, args.teacher_arch)
                              + ["Arch.frozen_mode=train"]), "--overwrite"], log, show=SHOW)
        means = running_means(pc_log, os.path.join(run, "here", "DistillationModel", "history.jsonl"))
        gaps = [abs(a - b) for _, a, b in means if a is not None and b is not None]
        rows.append((seed, len(means), max(gaps) if gaps else None, means[-1][1] if means else None,
                     means[-1][2] if means else None, last_top1(pc_log, PADDLECLAS_TOP1), last_top1(log, OWN_TOP1)))
    lines = ["| seed | iterations | max abs. difference of the mean loss so far | mean loss PaddleClas | "
             "mean loss here | top-1 PaddleClas | top-1 here |", "|" + " --- |" * 7]
    for seed, n, gap, a, b, ta, tb in rows:
        lines.append(f"| {seed} | {n} | {'-' if gap is None else f'{gap:.5f}'} | {fmt(a)} | {fmt(b)} | {fmt(ta)} | "
                     f"{fmt(tb)} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--paddleclas", required=True, help="a PaddleClas checkout (the folder holding tools/ and ppcls/)")
    p.add_argument("--paddleclas_commit", default=None, help="its commit, for the table (default: git rev-parse)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=3, help="the students' Global.epochs")
    p.add_argument("--teacher_epochs", type=int, default=10)
    p.add_argument("--teacher_here", action="store_true", help="also train the teacher with this package")
    p.add_argument("--teacher_arch", default="ResNet50_vd", help="the teacher's Arch name (both configs)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--per_class", type=int, default=100)
    p.add_argument("--modes", nargs="+", choices=("train", "eval"), default=["train", "eval"],
                   help="Arch.frozen_mode of this package's student runs")
    p.add_argument("--rerun_threads", type=int, default=0,
                   help="also run PaddleClas's student again with this many threads (OMP_NUM_THREADS): how far "
                        "PaddleClas lands from itself when only the float summation order changes")
    p.add_argument("--out", default="output/bench/ppcls_fidelity")
    p.add_argument("--reuse_teacher", action="store_true",
                   help="use the PaddleClas teacher a former run left in --out instead of training it again")
    p.add_argument("--same_batches", action="store_true",
                   help="instead of the seeds' runs: one epoch of identical batches in both (no shuffle, no random "
                        "augmentation, no dropout; --per_class 32: 10 iterations), the loss compared at each iteration")
    args = p.parse_args(argv)
    pc = os.path.abspath(args.paddleclas)
    for rel in ("tools/train.py", TEACHER, STUDENT):
        if not os.path.isfile(os.path.join(pc, rel)):
            p.error(f"--paddleclas {pc}: {rel} not found (give the folder of a PaddleClas checkout)")
    out = os.path.abspath(args.out)
    logs = os.path.join(out, "logs")
    os.makedirs(logs, exist_ok=True)
    data = os.path.join(ROOT, f"data/mnist_per_class{args.per_class}")
    commands.run([PY, "tools/prepare_data.py", "mnist", "--out", data, "--per_class", args.per_class],
                 os.path.join(logs, "prepare.log"))
    t0 = time.time()
    first = args.seeds[0]
    teacher_cfg = dash_o(common_opts(data, args.teacher_epochs, args.batch_size, first)
                         + teacher_opts(f"{out}/paddleclas_teacher", args.teacher_arch))
    log = os.path.join(logs, "teacher_paddleclas.log")
    teacher = f"{out}/paddleclas_teacher/latest"  # PaddleClas writes output_dir/latest.pdparams: the last weights
    if not (args.reuse_teacher and os.path.isfile(teacher + ".pdparams") and os.path.isfile(log)):
        commands.run([PY, os.path.join(pc, "tools/train.py"), "-c", os.path.join(pc, TEACHER), *teacher_cfg], log,
                     show=SHOW)
    teachers = {"PaddleClas": last_top1(log, PADDLECLAS_TOP1)}
    if args.same_batches:
        text = (f"PaddleClas {paddleclas_commit(pc, args.paddleclas_commit)} (its tools/train.py) and this package on "
                f"its quick-start distillation config with the same -o, on identical batches: MNIST "
                f"{args.per_class * 10} train / {args.per_class * 10} val at 32 px, batch {args.batch_size}, 1 epoch, "
                f"no shuffle, ResizeImage instead of RandCropImage and RandFlipImage, student dropout 0, frozen "
                f"teacher in train mode ({args.teacher_arch}, PaddleClas's, top-1 {fmt(teachers['PaddleClas'])})\n\n"
                + same_batches(args, pc, data, teacher, out, logs) + f"\n\ntotal {time.time() - t0:.0f} s")
        print("\n" + text, flush=True)
        with open(os.path.join(out, "same_batches.md"), "w") as f:
            f.write(text + "\n")
        return 0
    rows = []
    for seed in args.seeds:
        base = common_opts(data, args.epochs, args.batch_size, seed)
        run, r = os.path.join(out, f"seed{seed}"), {}

        def paddleclas_student(suffix="", threads=None):
            """PaddleClas's student of this seed (its top-1); `threads`: OMP_NUM_THREADS, default the caller's."""
            log = os.path.join(logs, f"seed{seed}_student_paddleclas{suffix}.log")
            commands.run([PY, os.path.join(pc, "tools/train.py"), "-c", os.path.join(pc, STUDENT),
                          *dash_o(base + student_opts(f"{run}/paddleclas_student{suffix}", teacher, args.teacher_arch))],
                         log, show=SHOW, threads=threads)
            return last_top1(log, PADDLECLAS_TOP1)

        r["paddleclas"] = paddleclas_student()
        if args.rerun_threads:  # PaddleClas against itself: same config and seed, another float summation order
            r[f"again_{args.rerun_threads}"] = paddleclas_student(f"_{args.rerun_threads}threads", args.rerun_threads)
        for mode in args.modes:
            log = os.path.join(logs, f"seed{seed}_student_here_{mode}.log")
            commands.run([PY, "tools/train.py", "-c", os.path.join(pc, STUDENT),
                          *dash_o(base + student_opts(f"{run}/here_student_{mode}", teacher, args.teacher_arch)
                                  + [f"Arch.frozen_mode={mode}"]), "--overwrite"], log, show=SHOW)
            r[mode] = last_top1(log, OWN_TOP1)
        rows.append((seed, r))
        print("\n" + table(rows, args.modes, args.rerun_threads) + "\n", flush=True)
    if args.teacher_here:
        log = os.path.join(logs, "teacher_here.log")
        commands.run([PY, "tools/train.py", "-c", os.path.join(pc, TEACHER),
                      *teacher_cfg[:-1], f"Global.output_dir={out}/here_teacher", "--overwrite"], log, show=SHOW)
        teachers["here (not paired)"] = last_top1(log, OWN_TOP1)
    text = (f"PaddleClas {paddleclas_commit(pc, args.paddleclas_commit)} (its tools/train.py) and this package on "
            f"its quick-start configs with the same -o: MNIST {args.per_class * 10} train / {args.per_class * 10} "
            f"val at 32 px, batch {args.batch_size}. Teacher {args.teacher_arch}, {args.teacher_epochs} epochs, "
            f"seed {first}, "
            f"top-1 " + ", ".join(f"{k} {fmt(v)}" for k, v in teachers.items())
            + f". Students MobileNetV3_large_x1_0, {args.epochs} epochs, from PaddleClas's teacher; top-1 of the "
            f"final weights ({os.environ.get('OMP_NUM_THREADS')} thread(s) unless said):\n\n"
            + table(rows, args.modes, args.rerun_threads) + f"\n\ntotal {time.time() - t0:.0f} s")
    commands.save_results(out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
