"""`make demo-det` (tools/demo.py det) and bench/det_gain.py: PaddleDetection's YOLOv3 distillation workflow with the package's commands.

Every step is the command a user would type (tools/prepare_data.py, tools/train.py,
slim/distill/distill_train.py, tools/eval.py, tools/infer.py), printed before it runs, its [TRAIN] / [EVAL]
lines shown as they come, its whole output kept under OUT/logs.

The CPU pair (configs/det/ppyolo_tiny_trees_*.yml) is used, not PaddleDetection's YOLOv3 ResNet34 ->
MobileNetV1: from scratch on 2 CPU cores those need hours per run.
"""
import json
import os
import shutil
import statistics

from slim.engine import commands
from slim.engine.commands import PY, ROOT, last_checkpoint
TEACHER = "configs/det/ppyolo_tiny_trees_teacher.yml"
STUDENT = "configs/det/ppyolo_tiny_trees_student.yml"
DRAW_THRESHOLD = 0.03  # the demo models score below 0.1: a 0.5 threshold would draw nothing
SHOW = ("[TRAIN]", "[EVAL] #Images", "[EVAL] Class", "[DATA]", "error", "Error", "Traceback", "box(es)", "distill ")


def run(cmd, log_path, verbose=True):
    """Run a command from the repository root; stream the lines worth seeing; keep everything in log_path."""
    return commands.run(cmd, log_path, show=SHOW if verbose else ())


def fresh(path):
    if os.path.isdir(path):
        shutil.rmtree(path)  # these folders belong to the demo / benchmark; each run starts afresh
    return path


def prepare(logs):
    if not os.path.isfile(os.path.join(ROOT, "data/trees/val.txt")):
        run([PY, "tools/prepare_data.py", "trees", "--out", "data/trees"], os.path.join(logs, "prepare.log"))


def train(cfg, save_dir, iters, seed, log_path, teacher_cfg=None, teacher_weights=None, verbose=True):
    if teacher_cfg is None:
        cmd = [PY, "tools/train.py", "-c", cfg]
    else:
        cmd = [PY, "slim/distill/distill_train.py", "-c", cfg, "-t", teacher_cfg, "--teacher_pretrained",
               teacher_weights]
    cmd += ["--iters", str(iters), "--seed", str(seed), "--save_dir", save_dir, "--log_iters", "25",
            "--save_interval", "1000000"]
    return run(cmd, log_path, verbose)


def evaluate(cfg, weights, out_json, log_path, verbose=True):
    run([PY, "tools/eval.py", "-c", cfg, "-o", f"weights={weights}", "--save_json", out_json], log_path, verbose)
    with open(out_json) as f:
        return json.load(f)


def mean_sd(values):
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def demo(args, out):
    """tools/demo.py det: teacher, student alone, distilled student; eval table; sample predictions."""
    teacher_iters, iters = (6, 4) if args.quick else (300, 150)  # the schedule of bench/det_gain.py
    logs = os.path.join(out, "logs")
    runs = os.path.join(out, "runs")
    os.makedirs(logs, exist_ok=True)
    os.makedirs(runs, exist_ok=True)
    print(f"== Detection: tree crowns, PP-YOLO-Tiny-shaped MobileNetV3-large-x0.5 teacher -> MobileNetV3-small-x0.35 "
          f"student, from scratch on CPU (outputs in {out})", flush=True)
    timings = {}
    prepare(logs)
    dirs = {k: fresh(os.path.join(runs, k)) for k in ("teacher", "student", "distill")}
    print(f"== 1/3 teacher ({teacher_iters} iterations)", flush=True)
    timings["teacher"] = train(TEACHER, dirs["teacher"], teacher_iters, args.seed, os.path.join(logs, "teacher.log"))
    teacher_w = last_checkpoint(dirs["teacher"])
    print(f"== 2/3 student alone ({iters} iterations)", flush=True)
    timings["student alone"] = train(STUDENT, dirs["student"], iters, args.seed, os.path.join(logs, "student.log"))
    print(f"== 3/3 student distilled from the teacher ({iters} iterations, L2 on the three head outputs)", flush=True)
    timings["distilled"] = train(STUDENT, dirs["distill"], iters, args.seed, os.path.join(logs, "distill.log"),
                                 teacher_cfg=TEACHER, teacher_weights=teacher_w)
    print("== evaluation (tools/eval.py)", flush=True)
    results = {}
    for name, cfg, key in (("teacher", TEACHER, "teacher"), ("student alone", STUDENT, "student"),
                           ("distilled student", STUDENT, "distill")):
        results[name] = evaluate(cfg, last_checkpoint(dirs[key]), os.path.join(out, f"eval_{key}.json"),
                                 os.path.join(logs, f"eval_{key}.log"))
    print("== sample predictions (tools/infer.py)", flush=True)
    samples = os.path.join(out, "samples")
    fresh(samples)
    os.makedirs(samples)
    with open(os.path.join(ROOT, "data/trees/val.txt")) as f:
        val_images = [line.split()[0] for line in f if line.strip()]
    for path in (val_images[0], val_images[-1]):
        shutil.copy(os.path.join(ROOT, "data/trees", path), samples)
    for name, cfg, key in (("teacher", TEACHER, "teacher"), ("student", STUDENT, "student"),
                           ("distilled", STUDENT, "distill")):
        run([PY, "tools/infer.py", "-c", cfg, "--infer_dir", samples, "--output_dir",
             os.path.join(out, "predictions", name), "--draw_threshold", str(DRAW_THRESHOLD), "-o",
             f"weights={last_checkpoint(dirs[key])}"], os.path.join(logs, f"infer_{key}.log"))

    lines = [f"Detection (tree crowns, 24 val tiles), seed {args.seed}; weights of the last iteration of each run",
             "", "| model | mAP@0.5 (VOC 11-point) | train time (s) |", "| --- | --- | --- |"]
    for (name, res), t in zip(results.items(), (timings["teacher"], timings["student alone"], timings["distilled"])):
        lines.append(f"| {name} | {res['mAP50']:.4f} | {t:.0f} |")
    gain = results["distilled student"]["mAP50"] - results["student alone"]["mAP50"]
    lines += ["", f"distilled - alone: {gain:+.4f} mAP@0.5 (one seed; `python bench/det_gain.py --seeds 2` gives the "
                  f"mean and spread over seeds). Models trained from scratch on CPU for minutes: read the numbers "
                  f"as a pipeline check, not as detector quality.",
              f"Sample predictions (score >= {DRAW_THRESHOLD}; minutes of training from scratch leave every score low): {os.path.join(out, 'predictions')}/<model>/"]
    table = "\n".join(lines)
    print("\n" + table, flush=True)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"results": results, "timings_s": timings, "seed": args.seed,
                   "iters": {"teacher": teacher_iters, "student": iters}}, f, indent=1)
    print(f"\nwrote {os.path.join(out, 'results.md')}, results.json and predictions/", flush=True)
    return 0
