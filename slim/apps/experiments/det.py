"""`make demo-det` (tools/demo.py det) and bench/det_gain.py: PaddleDetection's YOLOv3 distillation workflow with the package's commands.

Every step is the command a user would type (tools/prepare_data.py, tools/train.py,
slim/distill/distill_train.py, tools/eval.py, tools/infer.py), printed before it runs, its [TRAIN] / [EVAL]
lines shown as they come, its whole output kept under OUT/logs.

Two datasets, one CPU-sized pair (PP-YOLO-Tiny-shaped, MobileNetV3-large-x0.5 teacher -> MobileNetV3-small-x0.35
student), not PaddleDetection's YOLOv3 ResNet34 -> MobileNetV1: from scratch on 2 CPU cores those need
hours per run.

- `nuclei` (the default): fluorescence nuclei, one box per nucleus cross-section. From scratch, this
  teacher learns them within its 2000 iterations (the first few hundred give nothing: YOLOv3 from scratch
  starts slowly), so there is something to distil.
- `trees`: deepforest's tree crowns, the dataset of the README's PaddleDetection quickstart. From scratch
  on a CPU the teacher learns almost nothing here (mAP@0.5 of a few hundredths), so a run shows the
  workflow, not a gain.
"""
import json
import os
import shutil
import statistics

from slim.apps import commands
from slim.apps.commands import PY, ROOT, last_checkpoint

# name -> configs, data, the command that prepares the data, and the schedule (teacher, student iterations)
# of the demo and, by default, of bench/det_gain.py
DATASETS = {
    "nuclei": {"teacher": "configs/det/ppyolo_tiny_nuclei_teacher.yml",
               "student": "configs/det/ppyolo_tiny_nuclei_student.yml",
               "data": "data/nuclei_boxes", "prepare": ["nuclei_boxes", "--out", "data/nuclei_boxes"],
               "title": "fluorescence nuclei, a box per nucleus cross-section", "iters": (2000, 800),
               "draw_threshold": 0.3},
    "trees": {"teacher": "configs/det/ppyolo_tiny_trees_teacher.yml",
              "student": "configs/det/ppyolo_tiny_trees_student.yml",
              "data": "data/trees", "prepare": ["trees", "--out", "data/trees"],
              "title": "tree crowns", "iters": (300, 150),
              "draw_threshold": 0.03},  # these models score below 0.1: a 0.5 threshold would draw nothing
}
SHOW = ("[TRAIN]", "[EVAL] #Images", "[EVAL] Class", "[DATA]", "error", "Error", "Traceback", "box(es)", "distill ")


def run(cmd, log_path, verbose=True, threads=None, label=None):
    """Run a command from the repository root; stream the lines worth seeing; keep everything in log_path."""
    return commands.run(cmd, log_path, show=SHOW if verbose else (), threads=threads, label=label)


def fresh(path):
    if os.path.isdir(path):
        shutil.rmtree(path)  # these folders belong to the demo / benchmark; each run starts afresh
    return path


def prepare(logs, dataset="nuclei"):
    d = DATASETS[dataset]
    if not os.path.isfile(os.path.join(ROOT, d["data"], "val.txt")):
        run([PY, "tools/prepare_data.py"] + d["prepare"], os.path.join(logs, "prepare.log"))


def train(cfg, save_dir, iters, seed, log_path, teacher_cfg=None, teacher_weights=None, verbose=True, threads=None,
          label=None):
    if teacher_cfg is None:
        cmd = [PY, "tools/train.py", "-c", cfg]
    else:
        cmd = [PY, "slim/distill/distill_train.py", "-c", cfg, "-t", teacher_cfg, "--teacher_pretrained",
               teacher_weights]
    cmd += ["--iters", str(iters), "--seed", str(seed), "--save_dir", save_dir, "--log_iters", "25",
            "--save_interval", "1000000"]
    return run(cmd, log_path, verbose, threads, label)


def evaluate(cfg, weights, out_json, log_path, verbose=True, threads=None):
    run([PY, "tools/eval.py", "-c", cfg, "-o", f"weights={weights}", "--save_json", out_json], log_path, verbose,
        threads)
    with open(out_json) as f:
        return json.load(f)


def mean_sd(values):
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def demo(args, out):
    """tools/demo.py det: teacher, student alone, distilled student; eval table; sample predictions."""
    name = getattr(args, "data", None) or "nuclei"
    d = DATASETS[name]
    teacher_cfg, student_cfg = d["teacher"], d["student"]
    teacher_iters, iters = (6, 4) if args.quick else d["iters"]  # the schedule of bench/det_gain.py
    logs = os.path.join(out, "logs")
    runs = os.path.join(out, "runs")
    os.makedirs(logs, exist_ok=True)
    os.makedirs(runs, exist_ok=True)
    print(f"== Detection: {d['title']}, PP-YOLO-Tiny-shaped MobileNetV3-large-x0.5 teacher -> MobileNetV3-small-x0.35 "
          f"student, from scratch on CPU (outputs in {out})", flush=True)
    timings = {}
    prepare(logs, name)
    dirs = {k: fresh(os.path.join(runs, k)) for k in ("teacher", "student", "distill")}
    # the teacher and the student alone are independent: on 2 cores or more they train side by side
    with commands.Jobs(2 if (os.cpu_count() or 1) >= 2 else 1) as jobs:
        print(f"== 1/3 teacher ({teacher_iters} iterations)", flush=True)
        teacher = jobs.submit(train, teacher_cfg, dirs["teacher"], teacher_iters, args.seed,
                              os.path.join(logs, "teacher.log"), label="teacher")
        print(f"== 2/3 student alone ({iters} iterations)", flush=True)
        alone = jobs.submit(train, student_cfg, dirs["student"], iters, args.seed, os.path.join(logs, "student.log"),
                            label="student alone")
        timings["teacher"], timings["student alone"] = teacher.result(), alone.result()
    teacher_w = last_checkpoint(dirs["teacher"])
    print(f"== 3/3 student distilled from the teacher ({iters} iterations, L2 on the three head outputs)", flush=True)
    timings["distilled"] = train(student_cfg, dirs["distill"], iters, args.seed, os.path.join(logs, "distill.log"),
                                 teacher_cfg=teacher_cfg, teacher_weights=teacher_w)
    print("== evaluation (tools/eval.py)", flush=True)
    models = (("teacher", teacher_cfg, "teacher"), ("student alone", student_cfg, "student"),
              ("distilled student", student_cfg, "distill"))
    results = {}
    for title, cfg, key in models:
        results[title] = evaluate(cfg, last_checkpoint(dirs[key]), os.path.join(out, f"eval_{key}.json"),
                                  os.path.join(logs, f"eval_{key}.log"))
    print("== sample predictions (tools/infer.py)", flush=True)
    samples = os.path.join(out, "samples")
    fresh(samples)
    os.makedirs(samples)
    with open(os.path.join(ROOT, d["data"], "val.txt")) as f:
        val_images = [line.split()[0] for line in f if line.strip()]
    for path in (val_images[0], val_images[len(val_images) // 2]):
        shutil.copy(os.path.join(ROOT, d["data"], path), samples)
    for title, cfg, key in models:
        run([PY, "tools/infer.py", "-c", cfg, "--infer_dir", samples, "--output_dir",
             os.path.join(out, "predictions", key), "--draw_threshold", str(d["draw_threshold"]), "-o",
             f"weights={last_checkpoint(dirs[key])}"], os.path.join(logs, f"infer_{key}.log"))

    n_val = results["teacher"].get("images", len(val_images))
    lines = [f"Detection ({d['title']}, {n_val} val images), seed {args.seed}; weights of the last iteration "
             f"of each run", "", "| model | iterations | mAP@0.5 (VOC 11-point) | train time (s) |",
             "| --- | --- | --- | --- |"]
    for (title, res), t, n in zip(results.items(), (timings["teacher"], timings["student alone"],
                                                     timings["distilled"]), (teacher_iters, iters, iters)):
        lines.append(f"| {title} | {n} | {res['mAP50']:.4f} | {t:.0f} |")
    gain = results["distilled student"]["mAP50"] - results["student alone"]["mAP50"]
    lines += ["", f"distilled - alone: {gain:+.4f} mAP@0.5 (one seed; `python bench/det_gain.py --seeds 2` gives the "
                  f"mean and spread over seeds). Models trained from scratch on a CPU.",
              f"Sample predictions (score >= {d['draw_threshold']}): {os.path.join(out, 'predictions')}/<model>/"]
    table = "\n".join(lines)
    print("\n" + table, flush=True)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"data": name, "results": results, "timings_s": timings, "seed": args.seed,
                   "iters": {"teacher": teacher_iters, "student": iters}}, f, indent=1)
    print(f"\nwrote {os.path.join(out, 'results.md')}, results.json and predictions/", flush=True)
    return 0
