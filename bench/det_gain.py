"""Does distillation help the detection student, and at which training budget? mAP@0.5 over seeds.

    python bench/det_gain.py --seeds 2 --jobs 2                 # nuclei boxes, the CPU pair (README: time)
    python bench/det_gain.py --seeds 2 --jobs 2 --teacher_iters 4000 --budgets 800,2000   # and a longer budget
    python bench/det_gain.py --seeds 2 --data trees --jobs 2    # the same pair on the tree crowns (minutes)
    python bench/det_gain.py --seeds 3 --teacher_config configs/det/yolov3_r34_trees_teacher.yml \\
        --student_config configs/det/yolov3_mobilenet_v1_trees_student.yml --data trees --teacher_iters 20000 \\
        --budgets 10000                                        # PaddleDetection's pair, for a GPU

What it measures, by default (say so when quoting it): the nuclei boxes of `tools/prepare_data.py
nuclei_boxes` (slices 0-39 train, 384 boxes; slices 45-59 val, 104 boxes; one class), models trained FROM
SCRATCH on CPU (no pretrained backbone exists offline), VOC mAP@0.5 (11-point) of the weights of the last
iteration (their moving average: the configs set use_ema, as PP-YOLO's do) on the validation slices, no
best-checkpoint picking on the set we report. The pair is PP-YOLO-Tiny-shaped: a MobileNetV3-large-x0.5
teacher (1.0M parameters) and a MobileNetV3-small-x0.35 student (0.17M), PaddleDetection's YOLOv3
distillation (L2 on the three YOLOv3 head outputs). The teacher is trained once (seed 0, --teacher_iters).
For each training budget (--budgets, student iterations; the learning-rate schedule spans each run) and
each seed, the student alone and the distilled student run the same schedule, and the table gives both,
their per-seed difference, mean and spread (sample standard deviation) over seeds, and every run. Several
budgets can be compared, because from scratch the gain depends on them: a short run of the student alone
has barely started to detect, while a long one has had time to catch up. This is not PaddleDetection's setting (VOC,
ImageNet-pretrained backbones, 90k iterations on 4 GPUs): the configs of its ResNet34 -> MobileNetV1 pair
are shipped for that; on this CPU they cannot be trained to a useful mAP in the time of a benchmark.
"""
import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from slim.apps import commands  # noqa: E402
from slim.apps.experiments.det import DATASETS, evaluate, fresh, last_checkpoint, mean_sd, prepare, train  # noqa: E402


def save_initial_weights(cfg_path, path):
    """The student's weights as built (seed 0), before any training step."""
    import paddle
    from slim.apps import launch
    from slim.engine import env
    env.seed_everything(0)
    task, cfg = launch.load_task_config(os.path.join(ROOT, cfg_path))
    paddle.save(task.build_model(cfg).state_dict(), path)


def cell(values, fmt=".4f"):
    """mean +- sample sd (no sd for one run), then every run."""
    mean, sd = mean_sd(values)
    spread = f" +- {sd:.4f}" if len(values) > 1 else ""
    return f"{mean:{fmt}}{spread} ({', '.join(f'{v:{fmt}}' for v in values)})"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--data", default="nuclei", choices=sorted(DATASETS))
    p.add_argument("--teacher_config", default=None, help="default: the dataset's teacher config")
    p.add_argument("--student_config", default=None, help="default: the dataset's student config")
    p.add_argument("--teacher_iters", type=int, default=None, help="default: the demo's (nuclei 2000, trees 300)")
    p.add_argument("--budgets", default=None,
                   help="student iterations per run, comma-separated (default: the demo's, nuclei 800, trees 150)")
    p.add_argument("--teacher_weights", default=None, help="reuse a trained teacher instead of training one")
    p.add_argument("--out", default=None, help="default: output/bench_det (nuclei), output/bench_det_trees (trees)")
    p.add_argument("--verbose", action="store_true", help="show the training lines")
    p.add_argument("--jobs", type=int, default=1, help="training runs at once, each on its share of the cores "
                   "(2 on a 2-core machine: the teacher trains beside the students alone)")
    args = p.parse_args()
    d = DATASETS[args.data]
    teacher_cfg, student_cfg = args.teacher_config or d["teacher"], args.student_config or d["student"]
    teacher_iters = args.teacher_iters or d["iters"][0]
    budgets = [int(b) for b in str(args.budgets).split(",")] if args.budgets else [d["iters"][1]]
    out = os.path.abspath(os.path.join(ROOT, args.out or ("output/bench_det" if args.data == "nuclei"
                                                          else f"output/bench_det_{args.data}")))
    logs = os.path.join(out, "logs")
    os.makedirs(logs, exist_ok=True)
    prepare(logs, args.data)
    t_start = time.time()
    timings = {}

    def run_student(key, n, seed, teacher_weights=None, threads=None):
        """One student run (distilled when teacher_weights is given) and its mAP@0.5."""
        print(f"== {'distilled student' if teacher_weights else 'student alone'}, seed {seed} ({n} iterations)",
              flush=True)
        rdir = fresh(os.path.join(out, key))
        timings[key] = train(student_cfg, rdir, n, seed, os.path.join(logs, f"{key}.log"),
                             teacher_cfg=teacher_cfg if teacher_weights else None, teacher_weights=teacher_weights,
                             verbose=args.verbose, threads=threads)
        value = evaluate(student_cfg, last_checkpoint(rdir), os.path.join(rdir, "eval.json"),
                         os.path.join(logs, f"eval_{key}.log"), args.verbose, threads)["mAP50"]
        print(f"   {key}: mAP@0.5 {value:.4f} ({timings[key]:.0f} s)", flush=True)
        return value

    planned = [(n, seed, distill) for n in budgets for seed in range(args.seeds) for distill in (False, True)]

    def key_of(n, seed, distill):
        return f"{'distilled' if distill else 'student'}_{n}_seed{seed}"

    results = {}
    # the teacher and the students alone are independent: with --jobs 2 they train side by side
    with commands.Jobs(args.jobs) as jobs:
        teacher_w = args.teacher_weights
        teacher_run = None
        if teacher_w is None:
            print(f"== teacher ({teacher_cfg}, {teacher_iters} iterations, seed 0)", flush=True)
            tdir = fresh(os.path.join(out, "teacher"))
            teacher_run = jobs.submit(train, teacher_cfg, tdir, teacher_iters, 0, os.path.join(logs, "teacher.log"),
                                      verbose=args.verbose)
        for n, seed, distill in planned:
            if not distill:
                results[n, seed, distill] = jobs.submit(run_student, key_of(n, seed, distill), n, seed)
        if teacher_run is not None:
            timings["teacher"] = teacher_run.result()
            teacher_w = last_checkpoint(tdir)
        teacher_map = evaluate(teacher_cfg, teacher_w, os.path.join(out, "eval_teacher.json"),
                               os.path.join(logs, "eval_teacher.log"), args.verbose)["mAP50"]
        print(f"   teacher mAP@0.5 {teacher_map:.4f}", flush=True)
        for n, seed, distill in planned:
            if distill:
                results[n, seed, distill] = jobs.submit(run_student, key_of(n, seed, distill), n, seed, teacher_w)
        maps = {run: future.result() for run, future in results.items()}

    # the reference every trained model must beat: the student as initialised (anchor-sized boxes, constant
    # objectness), i.e. what the metric gives for no learning at all
    init_w = os.path.join(out, "student_init.pdparams")
    save_initial_weights(student_cfg, init_w)
    init_map = evaluate(student_cfg, init_w, os.path.join(out, "eval_init.json"),
                        os.path.join(logs, "eval_init.log"), args.verbose)["mAP50"]
    print(f"   untrained student mAP@0.5 {init_map:.4f}", flush=True)

    n_val = json.load(open(os.path.join(out, "eval_teacher.json"))).get("images")
    seeds = list(range(args.seeds))
    lines = [
        f"Detection distillation gain: {d['title']}, from scratch on CPU; VOC mAP@0.5 (11-point) on the {n_val} "
        f"val images, last-iteration weights; {args.seeds} seed(s) per budget",
        f"teacher: {teacher_cfg} ({teacher_iters if args.teacher_weights is None else 'given'} iterations, "
        f"seed 0): mAP@0.5 {teacher_map:.4f}; student: {student_cfg}, untrained (no learning): {init_map:.4f}",
        "",
        "| student iterations | student alone | distilled student | gain (distilled - alone, same seed) |",
        "| --- | --- | --- | --- |",
    ]
    gains = {}
    for n in budgets:
        alone = [maps[n, seed, False] for seed in seeds]
        distilled = [maps[n, seed, True] for seed in seeds]
        gains[n] = [b - a for a, b in zip(alone, distilled)]
        lines.append(f"| {n} | {cell(alone)} | {cell(distilled)} | {cell(gains[n], '+.4f')} |")
    lines += ["", "Cells: mean +- sample sd over seeds, then each seed's value (seed 0, 1, ...)."]
    lines += ["", f"total time {time.time() - t_start:.0f} s with {args.jobs} run(s) at a time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())]
    table = "\n".join(lines)
    print("\n" + table, flush=True)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"untrained": init_map, "teacher": teacher_map,
                   "runs": [{"iters": n, "seed": seed, "distilled": distill, "mAP50": maps[n, seed, distill]}
                            for n, seed, distill in planned],
                   "gains": {str(n): g for n, g in gains.items()}, "timings_s": timings, "args": vars(args)}, f, indent=1)


if __name__ == "__main__":
    sys.exit(commands.main_guard(main))
