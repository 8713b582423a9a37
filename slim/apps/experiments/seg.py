"""`make demo` (tools/demo.py seg): the segmentation distillation job, end to end, with the package's commands.

Nuclei: prepare the data, train the teacher, train the student alone, distil the teacher into the
student, evaluate all three with tools/eval.py, then print a table and write it (results.md,
results.json) with the loss curves (loss_curves.png) to the output folder. Every step is the command a
user would type; each is printed before it runs, and its progress lines are shown as they come.
"""
import json
import os
import shutil

from slim.apps import commands
from slim.apps.commands import PY

DEMO = {
    "title": "Segmentation: nuclei, LR-ASPP MobileNetV3-large teacher -> MobileNetV3-small x0.35 student",
    "prepare": ["nuclei", "--out", "data/nuclei"],
    "teacher": "configs/seg/demo/teacher.yml",
    "student": "configs/seg/demo/student.yml",
    "metric": "mIoU",
    "eval_interval": {"teacher": 100, "student": 25},
    "extra_metrics": ["Acc", "Kappa", "Dice"],
}

SHOW = ("[TRAIN]", "[EVAL] #Images", "Class IoU", "error", "Error", "best", "wrote", "already", "Traceback")


def run(cmd, log_path):
    """Run a command, stream the lines worth seeing, keep the whole output in log_path."""
    return commands.run(cmd, log_path, show=SHOW, width=160)


def read_history(path):
    steps, losses = [], []
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                row = json.loads(line)
                if "Train/loss" in row:
                    steps.append(row["iter"])
                    losses.append(row)
    return steps, losses


def plot_curves(runs, out_png):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, save_dir in runs:
        steps, rows = read_history(os.path.join(save_dir, "history.jsonl"))
        task_terms = [k for k in (rows[0] if rows else {}) if k.startswith("Train/") and k not in
                      ("Train/loss", "Train/lr", "Train/batch_cost", "Train/reader_cost")
                      and not k.startswith("Train/distill") and "cwd" not in k]
        if rows and task_terms:
            ax.plot(steps, [r[task_terms[0]] for r in rows], label=f"{name}: {task_terms[0][6:]}")
        if rows and any(k.startswith("Train/distill") for k in rows[0]):
            ax.plot(steps, [r["Train/loss"] for r in rows], "--", label=f"{name}: total loss")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)


def demo(args, out):
    """Run the demo into `out` (args: seed, quick)."""
    runs_dir = os.path.join(out, "runs")
    if os.path.isdir(runs_dir):
        shutil.rmtree(runs_dir)  # this folder belongs to the demo; each demo run starts afresh
    os.makedirs(runs_dir, exist_ok=True)
    logs = os.path.join(out, "logs")
    os.makedirs(logs, exist_ok=True)
    quick = ["--iters", "4"] if args.quick else []
    common = ["--seed", str(args.seed), "--log_iters", "2" if args.quick else "25", "--save_interval", "100000",
              "--do_eval"]
    every = DEMO["eval_interval"]
    teacher_eval = ["--eval_interval", "2" if args.quick else str(every["teacher"])]
    student_eval = ["--eval_interval", "2" if args.quick else str(every["student"])]
    print(f"== {DEMO['title']} (outputs in {out})", flush=True)

    timings = {}
    timings["prepare data"] = run([PY, "tools/prepare_data.py"] + DEMO["prepare"], os.path.join(logs, "prepare.log"))
    teacher_dir, student_dir, distill_dir = (os.path.join(runs_dir, n) for n in ("teacher", "student", "distill"))
    print("== 1/3 teacher", flush=True)
    timings["teacher"] = run([PY, "tools/train.py", "--config", DEMO["teacher"], "--save_dir", teacher_dir]
                             + common + teacher_eval + quick, os.path.join(logs, "teacher.log"))
    teacher_weights = os.path.join(teacher_dir, "best_model", "model.pdparams")
    print("== 2/3 student alone", flush=True)
    timings["student alone"] = run([PY, "tools/train.py", "--config", DEMO["student"], "--save_dir", student_dir]
                                   + common + student_eval + quick, os.path.join(logs, "student.log"))
    print("== 3/3 student distilled from the teacher", flush=True)
    timings["distilled"] = run([PY, "slim/distill/distill_train.py", "--teacher_config", DEMO["teacher"],
                                "--student_config", DEMO["student"], "--teacher_pretrained", teacher_weights,
                                "--save_dir", distill_dir] + common + student_eval + quick,
                               os.path.join(logs, "distill.log"))

    print("== evaluation (tools/eval.py)", flush=True)
    results = {}
    for name, cfg, run_dir in (("teacher", DEMO["teacher"], teacher_dir), ("student alone", DEMO["student"], student_dir),
                               ("distilled student", DEMO["student"], distill_dir)):
        metrics_path = os.path.join(out, f"eval_{name.split()[0]}.json")
        weights = os.path.join(run_dir, "best_model", "model.pdparams")
        run([PY, "tools/eval.py", "--config", cfg, "--model_path", weights, "--save_json", metrics_path],
            os.path.join(logs, f"eval_{name.split()[0]}.log"))
        with open(metrics_path) as f:
            results[name] = json.load(f)

    metric = DEMO["metric"]
    cols = [metric] + DEMO["extra_metrics"]
    lines = [f"{DEMO['title']}; seed {args.seed}; best checkpoint by val {metric} of each run", "",
             "| model | " + " | ".join(cols) + " | train time (s) |", "|" + " --- |" * (len(cols) + 2)]
    for (name, res), t in zip(results.items(), (timings["teacher"], timings["student alone"], timings["distilled"])):
        lines.append(f"| {name} | " + " | ".join(f"{res[c]:.4f}" for c in cols) + f" | {t:.0f} |")
    gain = results["distilled student"][metric] - results["student alone"][metric]
    lines += ["", f"distilled - alone: {gain:+.4f} {metric} (one seed; `python bench/seg_gain.py --seeds 3` "
              "gives the mean and spread over seeds)"]
    table = "\n".join(lines)
    print("\n" + table, flush=True)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"results": results, "timings_s": timings, "seed": args.seed}, f, indent=1)
    plot_curves([("teacher", teacher_dir), ("student alone", student_dir), ("distilled", distill_dir)],
                os.path.join(out, "loss_curves.png"))
    print(f"\nwrote {os.path.join(out, 'results.md')}, results.json and loss_curves.png", flush=True)
    return 0
