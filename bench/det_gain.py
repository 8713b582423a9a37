"""Does distillation help the detection student? Teacher, student alone and distilled student, mAP@0.5 over seeds.

    python bench/det_gain.py --seeds 2                       # the CPU pair (about 30-40 min on 2 cores)
    python bench/det_gain.py --seeds 3 --teacher_config configs/det/yolov3_r34_trees_teacher.yml \
        --student_config configs/det/yolov3_mobilenet_v1_trees_student.yml --teacher_iters 20000 --iters 10000

What it measures, by default (say so when quoting it): the tree-crown tiles of tools/prepare_data.py
(81 training tiles / 625 boxes, 24 validation tiles / 309 boxes from held-out images, one class), models
trained FROM SCRATCH on CPU (no pretrained backbone exists offline), VOC mAP@0.5 (11-point) of the weights
of the last iteration on the validation tiles (no best-checkpoint picking on the set we report).
The pair is PP-YOLO-Tiny-shaped: a MobileNetV3-large-x0.5 teacher (1.0M parameters) and a
MobileNetV3-small-x0.35 student (0.17M), PaddleDetection's YOLOv3 distillation (L2 on the three YOLOv3 head
outputs). The teacher is trained once (seed 0, --teacher_iters); the student alone and the distilled
student run the same schedule (--iters) for each seed; the table gives mean and spread (sample standard
deviation) over seeds, and every run. This is not PaddleDetection's setting (VOC, ImageNet-pretrained
backbones, 90k iterations on 4 GPUs): the configs of its ResNet34 -> MobileNetV1 pair are shipped for that; on this CPU
they cannot be trained to a useful mAP in the time of a benchmark.
"""
import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from slim.engine import commands  # noqa: E402
from slim.tasks.det.experiment import (STUDENT, TEACHER, evaluate, fresh, last_checkpoint, mean_sd,  # noqa: E402
                                       prepare, train)


def save_initial_weights(cfg_path, path):
    """The student's weights as built (seed 0), before any training step."""
    import paddle
    from slim.engine import env, launch
    env.seed_everything(0)
    task, cfg = launch.load_task_config(os.path.join(ROOT, cfg_path))
    paddle.save(task.build_model(cfg).state_dict(), path)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--teacher_config", default=TEACHER)
    p.add_argument("--student_config", default=STUDENT)
    p.add_argument("--teacher_iters", type=int, default=300)
    p.add_argument("--iters", type=int, default=150, help="iterations of each student run")
    p.add_argument("--teacher_weights", default=None, help="reuse a trained teacher instead of training one")
    p.add_argument("--out", default="output/bench_det")
    p.add_argument("--verbose", action="store_true", help="show the training lines")
    args = p.parse_args()
    out = os.path.abspath(os.path.join(ROOT, args.out))
    logs = os.path.join(out, "logs")
    os.makedirs(logs, exist_ok=True)
    prepare(logs)
    t_start = time.time()
    timings = {}
    teacher_w = args.teacher_weights
    if teacher_w is None:
        print(f"== teacher ({args.teacher_config}, {args.teacher_iters} iterations, seed 0)", flush=True)
        tdir = fresh(os.path.join(out, "teacher"))
        timings["teacher"] = train(args.teacher_config, tdir, args.teacher_iters, 0, os.path.join(logs, "teacher.log"),
                                   verbose=args.verbose)
        teacher_w = last_checkpoint(tdir)
    teacher_map = evaluate(args.teacher_config, teacher_w, os.path.join(out, "eval_teacher.json"),
                           os.path.join(logs, "eval_teacher.log"), args.verbose)["mAP50"]
    print(f"   teacher mAP@0.5 {teacher_map:.4f}", flush=True)

    # the reference every trained model must beat: the student as initialised (anchor-sized boxes, constant
    # objectness), i.e. what the metric gives for no learning at all
    init_w = os.path.join(out, "student_init.pdparams")
    save_initial_weights(args.student_config, init_w)
    init_map = evaluate(args.student_config, init_w, os.path.join(out, "eval_init.json"),
                        os.path.join(logs, "eval_init.log"), args.verbose)["mAP50"]
    print(f"   untrained student mAP@0.5 {init_map:.4f}", flush=True)

    rows = {"student alone": [], "distilled": []}
    for seed in range(args.seeds):
        for name in rows:
            key = f"{name.split()[0]}_seed{seed}"
            rdir = fresh(os.path.join(out, key))
            print(f"== {name}, seed {seed} ({args.iters} iterations)", flush=True)
            distill = name == "distilled"
            timings[key] = train(args.student_config, rdir, args.iters, seed, os.path.join(logs, f"{key}.log"),
                                 teacher_cfg=args.teacher_config if distill else None,
                                 teacher_weights=teacher_w if distill else None, verbose=args.verbose)
            value = evaluate(args.student_config, last_checkpoint(rdir), os.path.join(rdir, "eval.json"),
                             os.path.join(logs, f"eval_{key}.log"), args.verbose)["mAP50"]
            rows[name].append(value)
            print(f"   mAP@0.5 {value:.4f} ({timings[key]:.0f} s)", flush=True)

    alone, dist = rows["student alone"], rows["distilled"]
    gains = [d - a for a, d in zip(alone, dist)]
    (ma, sa), (md, sd), (mg, sg) = mean_sd(alone), mean_sd(dist), mean_sd(gains)
    lines = [
        f"Detection distillation gain: tree tiles, from scratch on CPU; VOC mAP@0.5 (11-point) on the 24 val "
        f"tiles, last-iteration weights; {args.seeds} seed(s)",
        f"teacher: {args.teacher_config} ({args.teacher_iters if args.teacher_weights is None else 'given'} "
        f"iterations, seed 0); student: {args.student_config} ({args.iters} iterations per run, batch 8)",
        "",
        "| model | mAP@0.5 mean | spread (sd) | runs (seed 0, 1, ...) |",
        "| --- | --- | --- | --- |",
        f"| student, untrained (no learning) | {init_map:.4f} | - | 1 |",
        f"| teacher | {teacher_map:.4f} | - | 1 |",
        f"| student alone | {ma:.4f} | {sa:.4f} | " + ", ".join(f"{v:.4f}" for v in alone) + " |",
        f"| distilled student | {md:.4f} | {sd:.4f} | " + ", ".join(f"{v:.4f}" for v in dist) + " |",
        f"| gain (same seed) | {mg:+.4f} | {sg:.4f} | " + ", ".join(f"{g:+.4f}" for g in gains) + " |",
        "",
        f"total time {time.time() - t_start:.0f} s: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()),
    ]
    table = "\n".join(lines)
    print("\n" + table, flush=True)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"untrained": init_map, "teacher": teacher_map, **rows, "gains": gains, "timings_s": timings, "args": vars(args)}, f,
                  indent=1)


if __name__ == "__main__":
    sys.exit(commands.main_guard(main))
