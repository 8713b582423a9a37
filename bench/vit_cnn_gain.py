"""Distillation across model families on MNIST: CNN teacher -> ViT student (KD, DeiT's distillation token hard and
soft) and ViT teacher -> CNN student (a token-to-map feature pair), over seeds.

    python bench/vit_cnn_gain.py --seeds 3 [--out output/bench/vit_cnn_gain] [--per_class 0]
                                 [--iters 1000] [--teacher_iters 1000] [--vit_teacher_iters 2000] [--reuse_teachers]

Data: the MNIST-5k file (default --per_class 0: all of it, 4000 train / 1000 val; N: at most N images per class
and split). Configs (configs/cls/), every command the package's own:

| run | command | config |
| --- | --- | --- |
| CNN teacher | tools/train.py | convnet_teacher_mnist.yml |
| ViT alone | tools/train.py | vit_student_mnist.yml (PaddleClas's VisionTransformer: 4 blocks, width 64, 4x4 patches, 140k parameters) |
| ViT + KD | distill_train.py -t CNN teacher | vit_student_mnist.yml (CE + T^2 KL on the logits, T 4) |
| DeiT token, hard | distill_train.py -t CNN teacher | deit_student_mnist.yml (class head CE, head_dist CE with the teacher's argmax) |
| DeiT token, soft | distill_train.py -t CNN teacher | deit_student_mnist_soft.yml (head_dist T^2 KL, T 4) |
| ViT teacher | tools/train.py | vit_teacher_mnist.yml (the same ViT, trained --vit_teacher_iters) |
| CNN alone | tools/train.py | convnet_tiny_student_mnist.yml (2 conv stages of 4 and 8 channels, 1.1k parameters) |
| CNN + KD (logits only) | distill_train.py -t ViT teacher | convnet_tiny_student_mnist.yml (CE + T^2 KL, T 4) |
| CNN + KD + tokens-to-map | distill_train.py -t ViT teacher | convnet_tiny_student_mnist_vit_tokens.yml (+ L2 between the student's 7x7 map and the teacher's last-block patch tokens as a 7x7 map, 1x1 conv connector) |

The two teachers are trained once (seed 0); every student run is repeated with --seed s (s = 0 .. seeds-1: the
student's initialisation) and --data_seed 0 (one sample order and augmentation for every run) for the same number
of iterations. The teachers' tensors are computed once and read back by the other runs of the same teacher
tensors (--teacher_cache, float16 entries: the run that fills a cache trains on the stored values too), so a
distillation run costs about its student's step. tools/eval.py measures the weights of the last iteration (no
checkpoint is picked on the validation set). Prints a markdown table of top-1 mean ± standard deviation (range)
over seeds and the mean wall time of each kind of run (the machine's load adds noise to it).
"""
import argparse
import json
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

C = "configs/cls/"
TEACHERS = {"CNN teacher": C + "convnet_teacher_mnist.yml", "ViT teacher": C + "vit_teacher_mnist.yml"}
# (name, student config, teacher or None, teacher-output cache shared by the runs that compare the same tensors)
RUNS = [
    ("ViT alone", C + "vit_student_mnist.yml", None, None),
    ("ViT + KD (logits)", C + "vit_student_mnist.yml", "CNN teacher", "cnn_logits"),
    ("DeiT, distillation token hard", C + "deit_student_mnist.yml", "CNN teacher", "cnn_logits"),
    ("DeiT, distillation token soft", C + "deit_student_mnist_soft.yml", "CNN teacher", "cnn_logits"),
    ("CNN alone", C + "convnet_tiny_student_mnist.yml", None, None),
    ("CNN + KD (logits only)", C + "convnet_tiny_student_mnist.yml", "ViT teacher", "vit_logits"),
    ("CNN + KD + tokens-to-map pair", C + "convnet_tiny_student_mnist_vit_tokens.yml", "ViT teacher", "vit_tokens"),
]
SHOW = commands.SHOW + ("distill pair",)


def summary(values):
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f} ({min(values):.4f}-{max(values):.4f})"


def evaluate(config, weights, opts, log_path, json_path):
    commands.run([sys.executable, "tools/eval.py", "--config", config, "--model_path", weights, "--save_json",
                  json_path, "-o", *opts], log_path, show=SHOW, echo=False)
    with open(json_path) as f:
        return json.load(f)["top1"]


def train(name, config, run_dir, seed, iters, opts, logs, teacher=None, cache=None):
    """One run with the package's commands; returns (weights of the last iteration, wall seconds)."""
    shutil.rmtree(run_dir, ignore_errors=True)
    common = ["--seed", str(seed), "--data_seed", "0", "--iters", str(iters), "--log_iters", "250",
              "--save_interval", "100000", "--save_dir", run_dir]
    if teacher is None:
        cmd = [sys.executable, "tools/train.py", "--config", config]
    else:
        cmd = [sys.executable, "slim/distill/distill_train.py", "--teacher_config", TEACHERS[teacher[0]],
               "--teacher_pretrained", teacher[1], "--student_config", config, "--teacher_cache", cache]
    slug = name.lower().replace(" ", "_").replace(",", "").replace("+", "plus").replace("(", "").replace(")", "")
    wall = commands.run(cmd + common + ["-o", *opts], os.path.join(logs, f"{slug}_seed{seed}.log"), show=SHOW,
                        echo=False)
    return commands.last_checkpoint(run_dir), wall


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", default="output/bench/vit_cnn_gain")
    p.add_argument("--per_class", type=int, default=0, help="images per class and split (0: all of MNIST-5k)")
    p.add_argument("--iters", type=int, default=1000, help="iterations of every student run")
    p.add_argument("--teacher_iters", type=int, default=1000, help="iterations of the CNN teacher")
    p.add_argument("--vit_teacher_iters", type=int, default=2000, help="iterations of the ViT teacher")
    p.add_argument("--reuse_teachers", action="store_true",
                   help="take a teacher's last checkpoint a former run left in --out (same iterations) instead of "
                        "training it again (its train time is then not in the table)")
    args = p.parse_args(argv)
    out = os.path.abspath(args.out)
    logs = os.path.join(out, "logs")
    os.makedirs(logs, exist_ok=True)
    t_start = time.time()
    data_dir = experiment.prepare(os.path.join(logs, "prepare.log"), args.per_class, echo=False)
    opts = experiment.data_opts(data_dir)
    shutil.rmtree(os.path.join(out, "cache"), ignore_errors=True)  # filled afresh by this run's teachers

    teachers, results = {}, {}
    for name, iters in (("CNN teacher", args.teacher_iters), ("ViT teacher", args.vit_teacher_iters)):
        run_dir = os.path.join(out, "runs", name.split()[0].lower() + "_teacher")
        done = os.path.join(run_dir, f"iter_{iters}", "model.pdparams")
        if args.reuse_teachers and os.path.isfile(done):
            weights, wall = done, None  # trained by a former run: no time of this one
        else:
            weights, wall = train(name, TEACHERS[name], run_dir, 0, iters, opts, logs)
        top1 = evaluate(TEACHERS[name], weights, opts, os.path.join(logs, f"eval_{name.split()[0]}_teacher.log"),
                        os.path.join(out, f"eval_{name.split()[0]}_teacher.json"))
        teachers[name] = weights
        results[name] = {"top1": [top1], "wall": [wall], "iters": iters}
        print(f"{name}: top-1 {top1:.4f} " + (f"({wall:.0f} s)" if wall is not None else "(reused)"), flush=True)
    for seed in range(args.seeds):
        for name, config, teacher, cache in RUNS:
            run_dir = os.path.join(out, "runs", f"seed{seed}", name.split(",")[0].replace(" ", "_").replace("+", "p")
                                   + ("_soft" if "soft" in name else "") + ("_tokens" if "tokens" in name else ""))
            weights, wall = train(name, config, run_dir, seed, args.iters, opts, logs,
                                  (teacher, teachers[teacher]) if teacher else None,
                                  os.path.join(out, "cache", cache) if cache else None)
            top1 = evaluate(config, weights, opts, os.path.join(logs, f"eval_{os.path.basename(run_dir)}_{seed}.log"),
                            os.path.join(run_dir, "eval.json"))
            entry = results.setdefault(name, {"top1": [], "wall": [], "iters": args.iters, "teacher": teacher})
            entry["top1"].append(top1)
            entry["wall"].append(wall)
            print(f"seed {seed} {name}: top-1 {top1:.4f} ({wall:.0f} s)", flush=True)

    lines = [f"MNIST ({data_dir}: {experiment.split_sizes(data_dir)}), {args.seeds} seed(s) per student, "
             f"{args.iters} iterations per student run (--data_seed 0), teachers trained once (seed 0), their outputs "
             f"cached (float16); weights of the last iteration; top-1 mean ± std (range); CPU, "
             f"{os.environ.get('OMP_NUM_THREADS')} threads", "",
             "| run | teacher | iterations | top-1 | train time (s, mean) |", "| --- | --- | --- | --- | --- |"]
    for name in list(TEACHERS) + [run[0] for run in RUNS]:
        r = results[name]
        lines.append(f"| {name} | {r.get('teacher') or '-'} | {r['iters']} | {summary(r['top1'])} | "
                     + ("- (a former run's)" if None in r["wall"] else f"{statistics.mean(r['wall']):.0f}")
                     + " |")
    commands.save_results(out, "\n".join(lines), {"results": results, "args": vars(args)}, "bench/vit_cnn_gain.py",
                          argv, t_start)
    return 0


if __name__ == "__main__":
    sys.exit(commands.main_guard(main))
