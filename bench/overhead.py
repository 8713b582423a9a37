"""What the distillation engine costs on top of the work it cannot avoid, and against PaddleSlim.

DeepLabV3P ResNet50_vd (teacher) -> ResNet18_vd (student), CE on the student's logits, KL on logits
(T=1, x3) and channel-wise distillation (tau=4) on two backbone stage pairs through 1x1 connectors:
    student backbone.bb_1_1 (128 ch) -> teacher backbone.bb_1_3 (512 ch)
    student backbone.bb_3_1 (512 ch) -> teacher backbone.bb_3_2 (2048 ch)

Time, in one process, the variants interleaved step by step, median after warm-up:
  student   plain student train step (forward, CE, backward, SGD step)
  teacher   the teacher's no_grad forward
  floor     student + teacher: the cost any distillation must pay
  hand-written  the same distillation step written by hand (hooks, connectors, losses, no engine):
                the floor plus what the configured connectors and losses cost by themselves
  engine    the trainer's step, slim.engine.amp.train_step, around slim.distill.Distiller (same CE +
            distillation terms; the loss values stay on the device, as in training between log steps)
  paddleslim        PaddleSlim 2.6 `Distill(convert_fn=False)` with the same losses, teacher.eval() as
                    its docs show (teacher parameters left trainable)
  paddleslim-frozen the same with the teacher's parameters frozen by hand (stop_gradient=True)
Peak RSS: each variant alone in a fresh process (VmHWM after the same number of steps).

    python bench/overhead.py [--steps 10] [--warmup 3] [--batch_size 2] [--size 256] [--output_stride 8]
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections import OrderedDict

os.environ.setdefault("OMP_NUM_THREADS", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import paddle  # noqa: E402
import paddle.nn.functional as F  # noqa: E402

from slim.distill import Distiller  # noqa: E402
from slim.distill.losses import build_loss  # noqa: E402
from slim.engine.amp import train_step  # noqa: E402
from slim.tasks.seg import build_component  # noqa: E402

VARIANTS = ["student", "teacher", "hand-written", "engine", "paddleslim", "paddleslim-frozen"]
STAGE_PAIRS = [("backbone.bb_1_1", "backbone.bb_1_3", 128, 512), ("backbone.bb_3_1", "backbone.bb_3_2", 512, 2048)]
KL_WEIGHT, CWD_WEIGHT, TAU = 3.0, 1.0, 4.0


def deeplab(backbone, output_stride):
    multi_grid = [1, 2, 4] if output_stride == 8 else [1, 1, 1]
    aspp = [1, 12, 24, 36] if output_stride == 8 else [1, 6, 12, 18]
    return build_component({
        "type": "DeepLabV3P", "num_classes": 2, "backbone_indices": [0, 3], "aspp_ratios": aspp,
        "aspp_out_channels": 256, "align_corners": False,
        "backbone": {"type": backbone, "output_stride": output_stride, "multi_grid": multi_grid}})


def engine_pairs():
    pairs = [{"name": "kl_logits", "student": {"layer": "$output", "idx": 0},
              "teacher": {"layer": "$output", "idx": 0}, "loss": "KLLoss", "weight": KL_WEIGHT}]
    for s, t, c_in, c_out in STAGE_PAIRS:
        pairs.append({"student": s, "teacher": t, "loss": {"type": "SegChannelwiseLoss", "tau": TAU},
                      "weight": CWD_WEIGHT,
                      "align": {"type": "1x1conv", "in_channels": c_in, "out_channels": c_out}})
    return pairs


def paddleslim_config():
    from paddleslim.dygraph.dist.losses.basic_loss import BASIC_LOSS
    cwd = build_loss({"type": "SegChannelwiseLoss"}).__class__
    if "SegChannelwiseLoss" not in BASIC_LOSS.module_dict:
        BASIC_LOSS.register(cwd)  # PaddleSlim has no channel-wise loss: give it the same one
    return [{"loss_function": "SegChannelwiseLoss", "model_name_pairs": [["student_0", "teacher_0"]],
             "weight": CWD_WEIGHT, "tau": TAU,
             "align_params": {"align_type": "1x1conv", "in_channel": c_in, "out_channel": c_out},
             "layers": [{"layers_name": [s, t]}]} for s, t, c_in, c_out in STAGE_PAIRS]


def make_step(variant, args, seed=0):
    """Build the models of one variant and return a function running one step of it."""
    paddle.seed(seed)
    student = deeplab("ResNet18_vd", args.output_stride)
    teacher = deeplab("ResNet50_vd", args.output_stride)
    x = paddle.randn([args.batch_size, 3, args.size, args.size])
    y = paddle.randint(0, 2, [args.batch_size, args.size, args.size])
    kl = build_loss({"type": "KLLoss"})

    def ce(logits):
        return F.cross_entropy(logits, y.unsqueeze(1), axis=1).mean()

    if variant == "teacher":
        teacher.eval()

        def step():
            with paddle.no_grad():
                teacher(x)
        return step

    if variant == "student":
        opt = paddle.optimizer.SGD(learning_rate=1e-3, parameters=student.parameters())

        def step():
            loss = ce(student(x)[0])
            loss.backward()
            opt.step()
            opt.clear_grad()
        return step

    if variant == "hand-written":
        # The same step written by hand: forward hooks, two connectors, the same losses. What the
        # configured pairs cost by themselves, with no engine around them.
        teacher.eval()
        for p in teacher.parameters():
            p.stop_gradient = True
        connectors = [paddle.nn.Conv2D(c_in, c_out, 1) for _, _, c_in, c_out in STAGE_PAIRS]
        cwd = build_loss({"type": "SegChannelwiseLoss", "tau": TAU})
        feats = {}
        for i, (s_name, t_name, _, _) in enumerate(STAGE_PAIRS):
            dict(student.named_sublayers())[s_name].register_forward_post_hook(
                lambda layer, inp, out, i=i: feats.__setitem__(("s", i), out))
            dict(teacher.named_sublayers())[t_name].register_forward_post_hook(
                lambda layer, inp, out, i=i: feats.__setitem__(("t", i), out))
        params = student.parameters() + [p for c in connectors for p in c.parameters()]
        opt = paddle.optimizer.SGD(learning_rate=1e-3, parameters=params)

        def step():
            s_out = student(x)[0]
            with paddle.no_grad():
                t_out = teacher(x)[0]
            loss = ce(s_out) + KL_WEIGHT * kl(s_out, t_out, label=y)
            for i, conn in enumerate(connectors):
                loss = loss + CWD_WEIGHT * cwd(conn(feats[("s", i)]), feats[("t", i)])
            loss.backward()
            opt.step()
            opt.clear_grad()
        return step

    if variant == "engine":
        # the trainer's step (slim.engine.amp.train_step, fp32): losses stay on the device, checked at log steps
        distiller = Distiller(student, teacher, engine_pairs(), check_finite=False)
        opt = paddle.optimizer.SGD(learning_rate=1e-3, parameters=distiller.parameters())

        def forward():
            out = distiller(x, label=y)
            terms = OrderedDict(ce=ce(out.student_out[0]))
            terms.update(out.losses)
            return terms

        def step():
            train_step(forward, opt)
        return step

    from paddleslim.dygraph.dist import Distill
    teacher.eval()
    if variant == "paddleslim-frozen":
        for p in teacher.parameters():
            p.stop_gradient = True
    distill = Distill(paddleslim_config(), student, teacher, convert_fn=False, return_model_outputs=True)
    opt = paddle.optimizer.SGD(learning_rate=1e-3, parameters=distill.parameters())

    def step():
        # With one teacher PaddleSlim flattens its output list: t_out is the logits tensor itself.
        d_loss, s_out, t_out = distill(x)
        loss = ce(s_out[0]) + d_loss + KL_WEIGHT * kl(s_out[0], t_out, label=y)
        loss.backward()
        opt.step()
        opt.clear_grad()
    return step


def measure_memory(variant, args):
    step = make_step(variant, args)
    for _ in range(args.warmup + args.mem_steps):
        step()
    print(json.dumps({"variant": variant, "peak_rss_mb": peak_rss_mb()}))


def peak_rss_mb():
    """VmHWM of this process. (ru_maxrss survives exec, so a child forked from a big parent would
    report the parent's size; VmHWM belongs to the new address space.)"""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure_time(args):
    steps = {v: make_step(v, args) for v in VARIANTS}
    times = {v: [] for v in VARIANTS}
    last = {}
    for i in range(args.warmup + args.steps):
        for v in VARIANTS:
            t0 = time.perf_counter()
            steps[v]()
            elapsed = time.perf_counter() - t0
            if i >= args.warmup:
                times[v].append(elapsed)
            last[v] = elapsed
        print(f"  round {i + 1}/{args.warmup + args.steps}"
              f"{' (warm-up)' if i < args.warmup else ''}: "
              + ", ".join(f"{v} {last[v]:.2f}s" for v in VARIANTS), file=sys.stderr, flush=True)
    return {v: statistics.median(t) for v, t in times.items()}, {v: t for v, t in times.items()}


def run_memory_processes(args):
    peaks = {}
    for v in VARIANTS:
        cmd = [sys.executable, os.path.abspath(__file__), "--memory", v] + [
            f"--{k}={getattr(args, k)}" for k in ("batch_size", "size", "output_stride", "warmup", "mem_steps")]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        peaks[v] = json.loads(out.strip().splitlines()[-1])["peak_rss_mb"]
        print(f"  peak RSS {v}: {peaks[v]:.0f} MB", file=sys.stderr, flush=True)
    return peaks


def table(med, peaks, args):
    floor = med["student"] + med["teacher"]
    lines = [
        f"DeepLabV3P R50_vd -> R18_vd, batch {args.batch_size}, {args.size}x{args.size}, output_stride "
        f"{args.output_stride}, CPU {os.environ.get('OMP_NUM_THREADS')} threads, median of {args.steps} steps "
        f"after {args.warmup} warm-up, variants interleaved",
        "",
        "| variant | step time (s) | vs floor | peak RSS (MB) |",
        "| --- | --- | --- | --- |",
        f"| student train step | {med['student']:.3f} | | {peaks['student']:.0f} |",
        f"| teacher no_grad forward | {med['teacher']:.3f} | | {peaks['teacher']:.0f} |",
        f"| floor (student + teacher) | {floor:.3f} | 1.00 | |",
        f"| hand-written distillation step | {med['hand-written']:.3f} | {med['hand-written'] / floor:.2f} | "
        f"{peaks['hand-written']:.0f} |",
        f"| **slim.distill engine** | {med['engine']:.3f} | {med['engine'] / floor:.2f} | {peaks['engine']:.0f} |",
        f"| PaddleSlim 2.6 Distill (teacher.eval()) | {med['paddleslim']:.3f} | "
        f"{med['paddleslim'] / floor:.2f} | {peaks['paddleslim']:.0f} |",
        f"| PaddleSlim 2.6 Distill, teacher frozen by hand | {med['paddleslim-frozen']:.3f} | "
        f"{med['paddleslim-frozen'] / floor:.2f} | {peaks['paddleslim-frozen']:.0f} |",
        "",
        "| ratio | measured | target |",
        "| --- | --- | --- |",
        f"| engine / floor, time | {med['engine'] / floor:.3f} | <= 1.05 |",
        f"| engine / hand-written, time | {med['engine'] / med['hand-written']:.3f} | |",
        f"| engine / PaddleSlim, time | {med['engine'] / med['paddleslim']:.3f} | <= 0.90 |",
        f"| engine / PaddleSlim, peak RSS | {peaks['engine'] / peaks['paddleslim']:.3f} | <= 0.80 |",
        f"| engine / PaddleSlim frozen by hand, time | {med['engine'] / med['paddleslim-frozen']:.3f} | |",
        f"| engine / PaddleSlim frozen by hand, peak RSS | "
        f"{peaks['engine'] / peaks['paddleslim-frozen']:.3f} | |",
    ]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--mem_steps", type=int, default=3)
    p.add_argument("--batch_size", type=int, default=2)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--output_stride", type=int, default=8, choices=[8, 16])
    p.add_argument("--memory", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--json", help="also write the measurements to this file")
    args = p.parse_args()
    paddle.set_device("cpu" if not paddle.is_compiled_with_cuda() else "gpu")
    if args.memory:
        measure_memory(args.memory, args)
        return
    # Memory first, while this process is still small (children start from a fork of it).
    print("peak memory (one process per variant)...", file=sys.stderr, flush=True)
    peaks = run_memory_processes(args)
    print("timing (interleaved)...", file=sys.stderr, flush=True)
    med, raw = measure_time(args)
    print(table(med, peaks, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"median_s": med, "times_s": raw, "peak_rss_mb": peaks, "args": vars(args)}, f, indent=1)


if __name__ == "__main__":
    main()
