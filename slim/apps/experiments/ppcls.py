"""PaddleClas's quick-start distillation workflow with its own config shape (`tools/demo.py cls --paddleclas`).

On MNIST in ImageNetDataset layout (1000 train / 1000 val at 32 px; batch 32, RandCropImage scale [0.6, 1], 10 epochs),
as a PaddleClas user types it:
1. the teacher from its plain config:   tools/train.py -c configs/ppcls/ResNet50_vd_mnist.yaml -o Arch.name=ResNet18
2. the student alone, the same config:   -o Arch.name=MobileNetV3_large_x1_0
3. the distillation config, the teacher given by -o Arch.models.0.Teacher.pretrained=<teacher>/best_model (and
   -o Arch.models.0.Teacher.name=ResNet18): the student learns from the frozen teacher's soft labels alone
   (DistillationCELoss)
4. tools/eval.py -c ... -o Global.pretrained_model=<run>/best_model for each.
The teacher is ResNet18 instead of the quick start's ResNet50_vd: trained from scratch on these 1000 images for 10
epochs, ResNet50_vd reached a top-1 of 0.53 to 0.64 (below the student trained alone), ResNet18 0.93.
"""
import os
import re
import time
from functools import partial

from slim.apps import commands
from slim.apps.commands import PY
from slim.apps.experiments.cls import prepare, split_sizes

TEACHER = "configs/ppcls/ResNet50_vd_mnist.yaml"
DISTILL = "configs/ppcls/R50_vd_distill_MV3_large_x1_0_mnist.yaml"
EPOCHS = 10
TEACHER_ARCH = "ResNet18"  # see above: ResNet50_vd from scratch is too weak a teacher on 1000 images
SHOW = commands.SHOW + ("[EVAL]", "frozen")
run = partial(commands.run, show=SHOW, every=5)


def data_opts(data_dir):
    modes = (("Train", "train"), ("Eval", "val"))
    return [f"DataLoader.{mode}.dataset.{key}={data_dir}/{suffix}" for mode, split in modes
            for key, suffix in (("image_root", ""), ("cls_label_path", f"{split}_list.txt"))] + \
        ["DataLoader.Train.dataset.transform_ops.1.RandCropImage.scale=[0.6,1.0]",
         "DataLoader.Train.sampler.batch_size=32"]


def top1(log_path):
    with open(log_path) as f:
        found = re.findall(r"\[EVAL\] #Images: \d+ top1(?: \(\w+\))?: ([0-9.]+) top5: ([0-9.]+)", f.read())
    return (float(found[-1][0]), float(found[-1][1])) if found else (float("nan"), float("nan"))


def demo(args, out):
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    logs = os.path.join(out, "logs")
    print(f"== PaddleClas quick-start distillation ({TEACHER_ARCH} -> MobileNetV3_large_x1_0, soft labels only) on "
          f"MNIST; outputs in {out}", flush=True)
    t0 = time.time()
    data = prepare(os.path.join(logs, "prepare.log"))
    length = ["--iters", "4"] if args.quick else ["-o", f"Global.epochs={EPOCHS}"]
    common = ["-o", *data_opts(data), f"Global.output_dir={out}/runs", "--seed", str(args.seed), *length]
    runs = {
        f"teacher {TEACHER_ARCH}": (TEACHER, ["-o", f"Arch.name={TEACHER_ARCH}", "Optimizer.lr.learning_rate=0.01"],
                                    TEACHER_ARCH),
        "student alone MobileNetV3_large_x1_0": (TEACHER, ["-o", "Arch.name=MobileNetV3_large_x1_0"],
                                                 "MobileNetV3_large_x1_0"),
        "student distilled (teacher's soft labels only)": (
            DISTILL, ["-o", f"Arch.models.0.Teacher.name={TEACHER_ARCH}",
                      f"Arch.models.0.Teacher.pretrained={out}/runs/{TEACHER_ARCH}/best_model"], "DistillationModel"),
    }
    rows = []
    for name, (config, extra, folder) in runs.items():
        slug = folder.lower()
        run([PY, "tools/train.py", "-c", config, *common, *extra], os.path.join(logs, f"{slug}_train.log"))
        eval_log = os.path.join(logs, f"{slug}_eval.log")
        run([PY, "tools/eval.py", "-c", config, "-o", *data_opts(data), *extra[1:],
             f"Global.pretrained_model={out}/runs/{folder}/best_model"], eval_log)
        rows.append((name, config, *top1(eval_log)))
    text = (f"MNIST ({data}: {split_sizes(data)}), 32 px, seed {args.seed}, "
            f"{'4 iterations' if args.quick else f'{EPOCHS} epochs'} per run; best_model of each run\n\n"
            "| run | config | top-1 | top-5 |\n| --- | --- | --- | --- |\n"
            + "\n".join(f"| {n} | {c} | {a:.4f} | {b:.4f} |" for n, c, a, b in rows)
            + f"\n\nchance is 0.10; total {time.time() - t0:.0f} s")
    print("\n" + text, flush=True)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text + "\n")
    return 0
