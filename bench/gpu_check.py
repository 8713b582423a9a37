"""GPU check of the training step: time and peak GPU memory, fp32 against mixed precision, in under 5 minutes.

Two pairs:
  seg  DeepLabV3P ResNet50_vd (teacher) -> ResNet18_vd (student), 512x512, batch 8 (PaddleSeg's quick-start
       scale), CE + KL on logits + channel-wise distillation on two backbone stages (bench/overhead.py's pairs)
  det  PP-YOLO-Tiny nuclei (configs/det/ppyolo_tiny_nuclei_teacher.yml -> _student.yml, their L2 pairs on the
       head outputs), random images of --det_size px with random boxes as YOLOv3 targets, batch 8

Variants, each built fresh, its peak memory measured alone (paddle.device.cuda.max_memory_allocated, reset
between variants), median step time after warm-up (each step ends with a device synchronisation):
  student      the student's train step alone (forward, task loss, backward, SGD)
  floor        the student's step + the teacher's no_grad forward: what any distillation must pay
  engine fp32  the trainer's step (slim.engine.amp.train_step, the same function Trainer.run_step calls)
               with slim.distill.Distiller
  engine fp16  the same under fp16 O1 (autocast, GradScaler)
  engine bf16  the same under bf16 O1, where paddle.amp.is_bfloat16_supported()

    python bench/gpu_check.py [--steps 10] [--warmup 3] [--pairs seg,det]

Without a GPU it prints "no GPU: nothing measured" and exits 0.
"""
import argparse
import os
import statistics
import sys
import time
from collections import OrderedDict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import paddle  # noqa: E402
import paddle.nn.functional as F  # noqa: E402

NO_GPU = "no GPU: nothing measured"


def gpu_available():
    try:
        return paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
    except Exception:
        return False


# ----- the pairs -----------------------------------------------------------------------------------
def seg_pair(args):
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from overhead import deeplab, engine_pairs
    size, n = args.seg_size, args.batch_size
    student, teacher = deeplab("ResNet18_vd", 8), deeplab("ResNet50_vd", 8)
    x = paddle.randn([n, 3, size, size])
    y = paddle.randint(0, 2, [n, size, size])

    def task_loss(out):
        return OrderedDict(ce=F.cross_entropy(out[0], y.unsqueeze(1), axis=1).mean())
    return student, teacher, engine_pairs(), (x,), {}, y, task_loss


def det_pair(args):
    from slim.apps.launch import load_task_config
    from slim.distill.pairs import parse_pairs
    task, s_cfg = load_task_config(os.path.join(ROOT, "configs/det/ppyolo_tiny_nuclei_student.yml"))
    _, t_cfg = load_task_config(os.path.join(ROOT, "configs/det/ppyolo_tiny_nuclei_teacher.yml"))
    student, teacher = task.build_model(s_cfg), task.build_model(t_cfg)
    n, size = args.batch_size, args.det_size
    (inputs,) = task.example_inputs(s_cfg, [n, 3, size, size])
    num_classes = int(s_cfg.get("num_classes") or 1)
    masks = (s_cfg.get("YOLOv3Head") or {}).get("anchor_masks") or [[6, 7, 8], [3, 4, 5], [0, 1, 2]]
    downsample = (s_cfg.get("YOLOv3Loss") or {}).get("downsample") or [32, 16, 8]
    rng = np.random.RandomState(0)
    boxes = np.concatenate([rng.uniform(0.2, 0.8, (n, 8, 2)), rng.uniform(0.05, 0.15, (n, 8, 2))], -1)
    inputs.update(gt_bbox=paddle.to_tensor(boxes.astype("float32")),
                  gt_class=paddle.zeros([n, 8], dtype="int32"), gt_score=paddle.ones([n, 8], dtype="float32"))
    for i, (mask, ds) in enumerate(zip(masks, downsample)):  # Gt2YoloTarget's layout, one positive per image
        t = np.zeros([n, len(mask), 6 + num_classes, size // ds, size // ds], dtype="float32")
        t[:, 0, 0:2, 1, 1], t[:, 0, 2:4, 1, 1], t[:, 0, 4:6, 1, 1] = 0.5, 0.1, 1.0
        inputs[f"target{i}"] = paddle.to_tensor(t)
    inputs["epoch_id"] = 0
    pairs = parse_pairs(s_cfg.get("distill") or [])
    task_loss_fn = task.build_task_loss(s_cfg)

    def task_loss(out):
        return task_loss_fn(out, inputs)
    return student, teacher, pairs, (inputs,), {}, None, task_loss


PAIRS = {"seg": seg_pair, "det": det_pair}


# ----- the variants ----------------------------------------------------------------------------------
def make_step(pair, variant, args):
    """Models of one pair built fresh; a function running one step of `variant`."""
    from slim.distill import Distiller
    from slim.distill.precision import float32, float32_losses
    from slim.engine.amp import Precision, build_scaler, decorate_for_o2, train_step
    paddle.seed(0)
    student, teacher, pairs, inputs, kwargs, label, task_loss = PAIRS[pair](args)
    student.train()
    teacher.eval()
    for p in teacher.parameters():
        p.stop_gradient = True

    if variant in ("student", "floor"):
        opt = paddle.optimizer.SGD(learning_rate=1e-4, parameters=student.parameters())

        def step():
            losses = task_loss(student(*inputs, **kwargs))
            loss = paddle.add_n(list(losses.values()))
            loss.backward()
            opt.step()
            opt.clear_grad()
            if variant == "floor":
                with paddle.no_grad():
                    teacher(*inputs, **kwargs)
        return step

    precision = Precision({"engine fp32": "fp32", "engine fp16": "fp16", "engine bf16": "bf16"}[variant], "O1")
    decorate_for_o2(precision, student, teacher)
    distiller = Distiller(student, teacher, pairs, check_finite=False)
    distiller.build(*inputs, label=label, **kwargs)
    distiller.train()
    opt = paddle.optimizer.SGD(learning_rate=1e-4, parameters=distiller.parameters())
    scaler = build_scaler(precision)

    def forward():  # as Trainer.run_step's
        out = distiller(*inputs, label=label, **kwargs)
        terms = OrderedDict()
        with float32_losses():
            terms.update(task_loss(float32(out.student_out)))
        terms.update(out.losses)
        return terms

    def step():
        train_step(forward, opt, precision, scaler)
    step.precision = precision
    return step


def measure(pair, variant, args):
    paddle.device.cuda.empty_cache()
    paddle.device.cuda.reset_max_memory_allocated()
    step = make_step(pair, variant, args)
    times = []
    for i in range(args.warmup + args.steps):
        paddle.device.synchronize()
        t0 = time.perf_counter()
        step()
        paddle.device.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    peak = paddle.device.cuda.max_memory_allocated() / 2 ** 20
    note = getattr(step, "precision", None)
    note = note.note if note is not None else ""
    del step
    return statistics.median(times), peak, note


def table(pair, results):
    lines = [f"| {pair} variant | step time (s) | peak GPU memory (MiB) | vs floor (time) |", "| --- | --- | --- | --- |"]
    floor = results.get("floor", (None,))[0]
    for variant, (t, mem, note) in results.items():
        ratio = f"{t / floor:.2f}" if floor and variant != "student" else ""
        lines.append(f"| {variant}{' (' + note + ')' if note else ''} | {t:.4f} | {mem:.0f} | {ratio} |")
    lines += ["", "| ratio | time | memory |", "| --- | --- | --- |"]
    if "floor" in results and "engine fp32" in results:
        e, f = results["engine fp32"], results["floor"]
        lines.append(f"| engine fp32 / floor | {e[0] / f[0]:.3f} | {e[1] / f[1]:.3f} |")
    for low in ("engine fp16", "engine bf16"):
        if low in results and "engine fp32" in results:
            a, b = results[low], results["engine fp32"]
            lines.append(f"| {low.split()[1]} / fp32 (engine) | {a[0] / b[0]:.3f} | {a[1] / b[1]:.3f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--seg_size", type=int, default=512)
    p.add_argument("--det_size", type=int, default=320)
    p.add_argument("--pairs", default="seg,det")
    args = p.parse_args(argv)
    if not gpu_available():
        print(NO_GPU)
        return 0
    paddle.set_device("gpu")
    name = paddle.device.cuda.get_device_name()
    variants = ["student", "floor", "engine fp32", "engine fp16"]
    if paddle.amp.is_bfloat16_supported():
        variants.append("engine bf16")
    print(f"GPU: {name}; batch {args.batch_size}; median of {args.steps} steps after {args.warmup} warm-up; "
          f"O1 autocast; peak memory per variant (max_memory_allocated, reset between variants)")
    for pair in [s.strip() for s in args.pairs.split(",") if s.strip()]:
        results = OrderedDict()
        for variant in variants:
            t0 = time.perf_counter()
            results[variant] = measure(pair, variant, args)
            print(f"  {pair} {variant}: {results[variant][0]:.4f} s/step, {results[variant][1]:.0f} MiB "
                  f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
        size = args.seg_size if pair == "seg" else args.det_size
        print(f"\n{pair}: {size}x{size}, batch {args.batch_size}, GPU {name}\n")
        print(table(pair, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
