"""What does int8 cost and buy? fp32 student, PTQ, QAT alone, QAT + KD, QAT + self-distillation, over seeds; and
Paddle Inference CPU latency of fp32 against int8.

    python bench/quant_gain.py --seeds 3 [--pairs seg,cls] [--out output/bench/quant_gain] \
        [--seg_teacher W.pdparams] [--cls_teacher W.pdparams] [--latency_repeats 50]
    python bench/quant_gain.py --latency_only          # the latency table alone: the fixed-size models, and the
                                                        # demo students of a former full run in --out
    python bench/quant_gain.py --quick                  # a few iterations of everything (checks the pipeline)

Pairs: the seg demo pair (configs/seg/demo: LR-ASPP MobileNetV3-large teacher, MobileNetV3-small x0.35 student,
nuclei) and the cls pair of the method table (configs/cls/convnet_*_mnist.yml, MNIST with 100 images per class and
split). One teacher per pair (given, or trained with seed 0). For each seed s, with --seed s --data_seed 0 (the same
samples and augmentations in every run), the package's own commands:

  fp32 student      distill_train.py with the best method of the README's method table for the pair (seg: CWD on
                    the logits, tau 4, x3; cls: KD, T 4, x1), the teacher's outputs from a teacher cache; best
                    checkpoint by the val metric
  PTQ int8          tools/ptq.py of that student (KL, 10 training batches)
  QAT int8          tools/train.py --quant_config Q --init_weights <fp32 student>, QAT_ITERS at a tenth of the fp32
                    learning rate (seg) or 5e-4 (cls)
  QAT + KD          the same in distill_train.py with the fp32 teacher and the fp32 student's method
  QAT + self-KD     the same with --teacher self (the frozen fp32 student as teacher, same method)

Every QAT run keeps its best checkpoint by the (fake-quant) val metric; tools/export.py writes it as an int8
inference model and `tools/eval.py --inference_model` measures it through Paddle Inference (oneDNN int8, CPU): the
table's metric is the exported model's (the fp32 row: its fp32 export through oneDNN fp32). File size: the
exported program and weights. Latency: Paddle Inference, batch 1, one val-sized random input, fp32 and int8
predictors at 1 and 2 threads created in this process and run in turn (round robin), --latency_warmup runs each,
then the median of --latency_repeats; other processes on the machine add noise, so the ratios are the result.
Also the latency alone (random weights, int8 scales from two random batches) of the tutorial student
(DeepLabV3P ResNet18_vd, 512x512) and classifiers at 224 px (ResNet18, MobileNetV3-large).
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
os.environ.setdefault("OMP_NUM_THREADS", "2")

import yaml  # noqa: E402

from slim.apps import commands  # noqa: E402
from slim.apps.commands import PY  # noqa: E402

# PaddleSlim's QAT settings, with the fake-quant export format: on this CPU's oneDNN it ran ResNet18 at 224 px in
# 0.51x the fp32 time against 0.64x for onnx_format true (the latency table shows both formats; onnx_format true
# stores int8 weights, 4x smaller files)
QUANT = {"weight_quantize_type": "channel_wise_abs_max", "activation_quantize_type": "moving_average_abs_max",
         "weight_bits": 8, "activation_bits": 8, "onnx_format": False}
MNIST = "data/mnist_per_class100"
PAIRS = {
    "seg": {
        "title": "Nuclei segmentation, LR-ASPP MobileNetV3-large teacher -> MobileNetV3-small x0.35 student",
        "teacher": "configs/seg/demo/teacher.yml", "student": "configs/seg/demo/student.yml", "metric": "mIoU",
        "method": ("CWD on logits (tau=4, x3)", {"types": [{"type": "SegChannelwiseLoss", "tau": 4}], "coef": [3]}),
        "opts": [], "teacher_flags": ["--do_eval", "--eval_interval", "100"], "eval_interval": 25,
        "qat_iters": 100, "qat_lr": ["lr_scheduler.learning_rate=0.001"], "qat_eval": 25,
        "input": [1, 3, 256, 256], "prepare": ["nuclei", "--out", "data/nuclei"],
    },
    "cls": {
        "title": "MNIST classification, ConvNet teacher (92k parameters) -> ConvNet student (22k)",
        "teacher": "configs/cls/convnet_teacher_mnist.yml", "student": "configs/cls/convnet_student_mnist.yml",
        "metric": "top1",
        "method": ("KD (KL, T=4, x1)", {"types": [{"type": "KLLoss", "temperature": 4}], "coef": [1]}),
        "opts": [f"{split}_dataset.{key}={MNIST}{suffix}" for split in ("train", "val")
                 for key, suffix in (("dataset_root", ""), ("file_list", f"/{split}_list.txt"))],
        "teacher_flags": [], "eval_interval": 250,
        "qat_iters": 300, "qat_lr": ["lr_scheduler.learning_rate=0.0005", "lr_scheduler.warmup_iters=0"],
        "qat_eval": 100, "input": [1, 1, 28, 28], "prepare": ["mnist", "--out", MNIST, "--per_class", "100"],
    },
}
ROWS = ["fp32 student", "PTQ int8", "QAT int8", "QAT int8 + KD", "QAT int8 + self-KD"]
# the latency-only models: (name, task config dict, input shape)
LATENCY_MODELS = [
    ("DeepLabV3P ResNet18_vd (tutorial student)", "configs/seg/deeplabv3p_resnet18_vd_nuclei_student.yml", None,
     [1, 3, 512, 512]),
    ("ResNet18 classifier", None, {"task": "cls", "model": {"type": "ResNet18", "num_classes": 1000}},
     [1, 3, 224, 224]),
    ("MobileNetV3-large classifier", None, {"task": "cls", "model": {"type": "MobileNetV3Large", "num_classes": 1000}},
     [1, 3, 224, 224]),
]


def run(cmd, log):
    return commands.run(cmd, log, echo=False)


def summary(values):
    mean = statistics.mean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.4f} ± {std:.4f} ({min(values):.4f}-{max(values):.4f})"


def write_yaml(path, data):
    with open(path, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    return path


def read_json(path):
    with open(path) as f:
        return json.load(f)


def export_size(folder):
    """Bytes of the exported program and weights."""
    return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)
               if f.split(".")[-1] in ("json", "pdmodel", "pdiparams"))


class Pair:
    """The runs of one pair under out/<pair>/ (configs, logs, run folders, exports)."""

    def __init__(self, name, out, args):
        self.name, self.spec, self.args = name, PAIRS[name], args
        self.out = os.path.join(out, name)
        self.cfg_dir = os.path.join(self.out, "configs")
        os.makedirs(self.cfg_dir, exist_ok=True)
        self.quick = ["--iters", "4"] if args.quick else []
        self.quant = write_yaml(os.path.join(self.cfg_dir, "quant.yml"), {"quant": QUANT})
        self.method_cfg = write_yaml(os.path.join(self.cfg_dir, "student_method.yml"),
                                     {"_base_": os.path.join(ROOT, self.spec["student"]),
                                      "distill_loss": self.spec["method"][1]})
        self.metrics = {row: [] for row in ROWS}      # through Paddle Inference
        self.dygraph = {row: [] for row in ROWS}      # the run's best checkpoint in dygraph (fake-quant for QAT)
        self.sizes, self.times = {}, {row: [] for row in ROWS}
        self.exports = {}

    def log(self, text):
        print(f"[{self.name}] {text}", file=sys.stderr, flush=True)

    def teacher(self):
        given = getattr(self.args, f"{self.name}_teacher")
        if given:
            return given
        run_dir = os.path.join(self.out, "teacher")
        shutil.rmtree(run_dir, ignore_errors=True)
        run([PY, "tools/train.py", "-c", self.spec["teacher"], "--save_dir", run_dir, "--seed", "0", "--log_iters",
             "1000", "--save_interval", "100000"] + self.spec["teacher_flags"] + self.quick + self._opts(),
            os.path.join(self.out, "teacher.log"))
        best = os.path.join(run_dir, "best_model", "model.pdparams")
        return best if os.path.isfile(best) else commands.last_checkpoint(run_dir)

    def _slug(self, row):
        return row.replace(" + ", "_and_").replace(" ", "_").replace("-", "_").lower()

    def _opts(self, extra=()):
        """One -o group (argparse keeps only the last group): the pair's data overrides and `extra`."""
        values = list(self.spec["opts"]) + list(extra)
        return ["-o", *values] if values else []

    def _train(self, row, seed, cmd, eval_every, extra_opts=()):
        run_dir = os.path.join(self.out, f"seed{seed}", self._slug(row))
        shutil.rmtree(run_dir, ignore_errors=True)
        flags = ["--seed", str(seed), "--data_seed", "0", "--save_dir", run_dir, "--log_iters", "1000",
                 "--save_interval", "100000", "--do_eval", "--eval_interval", str(2 if self.quick else eval_every)]
        seconds = run(cmd + flags + self.quick + self._opts(extra_opts),
                      os.path.join(self.out, f"seed{seed}", f"{self._slug(row)}.log"))
        self.times[row].append(seconds)
        self.dygraph[row].append(read_json(os.path.join(run_dir, "best_model", "metrics.json"))[self.spec["metric"]])
        return os.path.join(run_dir, "best_model", "model.pdparams")

    def _export(self, row, seed, weights, quant):
        folder = os.path.join(self.out, f"seed{seed}", f"{self._slug(row)}_export")
        run([PY, "tools/export.py", "-c", self.spec["student"], "--model_path", weights, "--save_dir", folder,
             "--check_shape", ",".join(str(v) for v in self.spec["input"])]
            + (["--quant_config", self.quant] if quant else []) + self._opts(),
            os.path.join(self.out, f"seed{seed}", f"{self._slug(row)}_export.log"))
        return folder

    def _evaluate(self, row, seed, folder):
        """The exported model's metric through Paddle Inference (int8 exports in int8)."""
        logs = os.path.join(self.out, f"seed{seed}")
        metrics_path = os.path.join(logs, f"{self._slug(row)}_inference.json")
        run([PY, "tools/eval.py", "-c", self.spec["student"], "--inference_model", folder, "--save_json",
             metrics_path, "--warmup", "2", "--repeats", "5"] + self._opts(),
            os.path.join(logs, f"{self._slug(row)}_eval.log"))
        self.metrics[row].append(read_json(metrics_path)[self.spec["metric"]])
        self.sizes[row] = export_size(folder)
        if seed == 0:
            self.exports[row] = folder
        dygraph = f", {self.dygraph[row][-1]:.4f} in dygraph" if len(self.dygraph[row]) == len(self.metrics[row]) \
            else ""
        self.log(f"seed {seed} {row}: {self.spec['metric']} {self.metrics[row][-1]:.4f} (Paddle Inference){dygraph}")

    def seed(self, seed, teacher, cache):
        spec = self.spec
        os.makedirs(os.path.join(self.out, f"seed{seed}"), exist_ok=True)
        distill = [PY, "slim/distill/distill_train.py", "-c", self.method_cfg]
        kd = ["-t", spec["teacher"], "--teacher_pretrained", teacher, "--teacher_cache", cache]
        fp32 = self._train("fp32 student", seed, distill + kd, spec["eval_interval"])
        self._evaluate("fp32 student", seed, self._export("fp32 student", seed, fp32, quant=False))
        # PTQ: no training; tools/ptq.py writes the int8 export
        folder = os.path.join(self.out, f"seed{seed}", f"{self._slug('PTQ int8')}_export")
        self.times["PTQ int8"].append(run(
            [PY, "tools/ptq.py", "-c", spec["student"], "--model_path", fp32, "--calib_batches", "10",
             "--save_dir", folder, "--seed", str(seed)] + self._opts(), os.path.join(self.out, f"seed{seed}", "ptq.log")))
        self._evaluate("PTQ int8", seed, folder)
        qat = ["--quant_config", self.quant, "--init_weights", fp32] + ([] if self.quick else
                                                                        ["--iters", str(spec["qat_iters"])])
        for row, cmd in (("QAT int8", [PY, "tools/train.py", "-c", spec["student"]]),
                         ("QAT int8 + KD", distill + kd),
                         ("QAT int8 + self-KD", distill + ["--teacher", "self"])):
            weights = self._train(row, seed, cmd + qat, spec["qat_eval"], spec["qat_lr"])
            self._evaluate(row, seed, self._export(row, seed, weights, quant=True))

    def table(self, seeds):
        m = self.spec["metric"]
        fp32 = self.metrics["fp32 student"]
        lines = [f"{self.spec['title']}; {seeds} seed(s) (--seed s, --data_seed 0); the fp32 student by "
                 f"{self.spec['method'][0]}; QAT {self.spec['qat_iters'] if not self.args.quick else 4} iterations "
                 f"from it; {m} of the exported model through Paddle Inference (CPU, oneDNN; int8 rows in int8)", "",
                 f"| model | {m} (Paddle Inference), mean ± std (range) | - fp32 student, mean (per seed) | "
                 f"{m} in dygraph (QAT: fake-quant), mean | export size (KB) | time (s), median |",
                 "| --- | --- | --- | --- | --- | --- |"]
        for row in ROWS:
            values = self.metrics[row]
            if not values:
                continue
            diff = [v - f for v, f in zip(values, fp32)]
            gap = "-" if row == "fp32 student" else \
                f"{100 * statistics.mean(diff):+.2f} pts ({', '.join(f'{100 * d:+.2f}' for d in diff)})"
            dy = f"{statistics.mean(self.dygraph[row]):.4f}" if self.dygraph[row] else "-"
            lines.append(f"| {row} | {summary(values)} | {gap} | {dy} | {self.sizes[row] / 1024:.0f} | "
                         f"{statistics.median(self.times[row]):.0f} |")
        return "\n".join(lines)

    def verdict(self):
        """The issue's criteria, as measured: QAT + distillation within 0.5 points of the fp32 student and not
        below PTQ or QAT alone (3-seed means)."""
        mean = {row: statistics.mean(v) for row, v in self.metrics.items() if v}
        out = []
        for row in ("QAT int8 + KD", "QAT int8 + self-KD"):
            if row not in mean:
                continue
            gap = 100 * (mean[row] - mean["fp32 student"])
            out.append(f"{row}: {gap:+.2f} pts against the fp32 student (at most 0.5 below it: "
                       f"{'yes' if gap >= -0.5 else 'no'}); {'not below' if mean[row] >= mean['PTQ int8'] else 'below'} PTQ "
                       f"({100 * (mean[row] - mean['PTQ int8']):+.2f}); "
                       f"{'not below' if mean[row] >= mean['QAT int8'] else 'below'} QAT alone "
                       f"({100 * (mean[row] - mean['QAT int8']):+.2f})")
        return out


# ----- latency ---------------------------------------------------------------------------------------------------
def latencies(exports, shape, warmup, repeats):
    """{(label, threads): median ms} of `exports` ({label: (folder, precision)}) at 1 and 2 threads; the
    predictors are created in this process and run in turn (one call of each per round), so that the machine's
    load falls on all of them alike."""
    import numpy as np

    from slim.quant.inference import InferenceSettings, Predictor
    x = [np.random.RandomState(0).rand(*shape).astype("float32")]
    predictors = {(label, t): Predictor(folder, InferenceSettings(precision=precision, threads=t))
                  for label, (folder, precision) in exports.items() for t in (1, 2)}
    times = {k: [] for k in predictors}
    for _ in range(warmup):
        for pred in predictors.values():
            pred.run(x)
    for _ in range(repeats):
        for key, pred in predictors.items():
            start = time.perf_counter()
            pred.run(x)
            times[key].append((time.perf_counter() - start) * 1000.0)
    return {k: statistics.median(v) for k, v in times.items()}


def _calibrated_int8(task, cfg, shape, onnx_format):
    """The export layer of a randomly initialised model, quantised, its scales from two random batches."""
    import numpy as np
    import paddle

    from slim.quant import quant_settings, quantize_model
    model = task.build_model(cfg)
    quantize_model(model, quant_settings(dict(QUANT, onnx_format=onnx_format)))
    layer = task.export_model(model, cfg)
    layer.eval()
    for sub in layer.sublayers():  # scales: the fake-quant layers observe, the rest stays in eval mode
        if type(sub).__module__.endswith("quant_layers"):
            sub.training = True
    with paddle.no_grad():
        for seed in range(2):
            layer(paddle.to_tensor(np.random.RandomState(seed).rand(*([2] + shape[1:])).astype("float32")))
    layer.eval()
    return layer


def model_slug(name):
    """The folder name of a latency model: "ResNet18 classifier" -> resnet18_classifier."""
    return "".join(c if c.isalnum() else "_" for c in name.split(" (")[0]).lower()


def export_random_model(name, config, cfg_dict, shape, out):
    """{label: (folder, precision)}: the fp32 export of a model at its random start and its int8 exports in both
    formats (fake-quant ops, onnx_format false; quantize_linear with int8 weights, onnx_format true)."""
    import paddle

    from slim.apps.export import save_program
    from slim.apps.launch import load_task_config
    from slim.tasks import get_task
    folder = os.path.join(out, model_slug(name))
    if config:
        task, cfg = load_task_config(os.path.join(ROOT, config))
    else:
        task, cfg = get_task(cfg_dict), dict(cfg_dict)
    paddle.seed(0)
    spec = task.export_input_spec(cfg)
    layer = task.export_model(task.build_model(cfg), cfg)
    layer.eval()
    save_program(layer, os.path.join(folder, "fp32", "model"), spec, log=lambda *a: None)
    exports = {"fp32": (os.path.join(folder, "fp32"), "fp32")}
    for label, onnx in (("int8", False), ("int8 onnx_format", True)):
        save_program(_calibrated_int8(task, cfg, shape, onnx), os.path.join(folder, label.replace(" ", "_"), "model"),
                     spec, log=lambda *a: None)
        exports[label] = (os.path.join(folder, label.replace(" ", "_")), "int8")
    return exports


def latency_rows(name, shape, exports, lat):
    """Table rows (name, input, fp32 ms by threads, int8 ms by threads, sizes) for each int8 export."""
    rows = []
    for label in exports:
        if label == "fp32":
            continue
        what = name if label == "int8" else f"{name}, onnx_format true"
        rows.append((what, shape, {t: lat[("fp32", t)] for t in (1, 2)}, {t: lat[(label, t)] for t in (1, 2)},
                     (export_size(exports["fp32"][0]), export_size(exports[label][0]))))
    return rows


def demo_latency_rows(pair, args):
    """The latency rows of a pair's seed-0 fp32 student and QAT + KD int8 exports."""
    exports = {"fp32": (pair.exports["fp32 student"], "fp32"), "int8": (pair.exports["QAT int8 + KD"], "int8")}
    lat = latencies(exports, pair.spec["input"], args.latency_warmup, args.latency_repeats)
    return latency_rows(f"{pair.name} demo student (fp32 student, QAT + KD int8)", pair.spec["input"], exports, lat)


def latency_table(rows, warmup, repeats):
    lines = [f"Paddle Inference on this CPU ({os.cpu_count()} cores), batch 1, oneDNN; the fp32 and int8 predictors of a "
             f"model run in turn in one process: median ms of {repeats} runs after {warmup} warm-up", "",
             "| model | input | fp32, 1 thread | int8, 1 thread | int8 / fp32 | fp32, 2 threads | int8, 2 threads | "
             "int8 / fp32 | export size fp32 / int8 (KB) |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, shape, fp32, int8, sizes in rows:
        lines.append(f"| {name} | {'x'.join(str(v) for v in shape[1:])} | {fp32[1]:.2f} | {int8[1]:.2f} | "
                     f"{int8[1] / fp32[1]:.2f} | {fp32[2]:.2f} | {int8[2]:.2f} | {int8[2] / fp32[2]:.2f} | "
                     f"{sizes[0] / 1024:.0f} / {sizes[1] / 1024:.0f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--pairs", default="seg,cls")
    p.add_argument("--out", default="output/bench/quant_gain")
    p.add_argument("--seg_teacher", default=None, help="trained seg teacher weights (default: train one, seed 0)")
    p.add_argument("--cls_teacher", default=None, help="trained cls teacher weights (default: train one, seed 0)")
    p.add_argument("--latency_warmup", type=int, default=10)
    p.add_argument("--latency_repeats", type=int, default=50)
    p.add_argument("--latency_only", action="store_true",
                   help="only the latency table: the fixed-size models, and the seed-0 demo students a former full run "
                        "left in --out (the fp32 one exported again)")
    p.add_argument("--no_latency_models", action="store_true", help="skip the fixed-size models' latency")
    p.add_argument("--quick", action="store_true", help="4 iterations per run, 1 seed, 3 latency runs")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.latency_warmup, args.latency_repeats = 1, 1, 3
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    t_start = time.time()
    texts, results, rows = [], {"args": vars(args)}, []
    if not args.latency_only:
        for name in [n for n in args.pairs.split(",") if n]:
            pair = Pair(name, out, args)
            os.makedirs(pair.out, exist_ok=True)
            run([PY, "tools/prepare_data.py"] + pair.spec["prepare"], os.path.join(pair.out, "prepare.log"))
            teacher = pair.teacher()
            pair.log(f"teacher {teacher}")
            cache = os.path.join(pair.out, "teacher_cache")
            for seed in range(args.seeds):
                pair.seed(seed, teacher, cache)
            texts.append(pair.table(args.seeds))
            texts.append("\n".join(pair.verdict()))
            results[name] = {"metrics": pair.metrics, "dygraph": pair.dygraph, "sizes": pair.sizes,
                             "times": pair.times, "teacher": teacher}
            print(texts[-2] + "\n" + texts[-1] + "\n", flush=True)
            rows += demo_latency_rows(pair, args)
    else:  # the demo students of a former full run in --out (seed 0), the fp32 one exported again by this code
        for name in [n for n in args.pairs.split(",") if n]:
            pair = Pair(name, out, args)
            fp32 = os.path.join(pair.out, "seed0", pair._slug("fp32 student"), "best_model", "model.pdparams")
            int8 = os.path.join(pair.out, "seed0", pair._slug("QAT int8 + KD") + "_export")
            if os.path.isfile(fp32) and os.path.isdir(int8):
                pair.exports = {"fp32 student": pair._export("fp32 student", 0, fp32, quant=False),
                                "QAT int8 + KD": int8}
                rows += demo_latency_rows(pair, args)
    if not args.no_latency_models:
        models_dir = os.path.join(out, "latency_models")
        for name, config, cfg_dict, shape in LATENCY_MODELS:
            exports = export_random_model(name, config, cfg_dict, shape, models_dir)
            lat = latencies(exports, shape, args.latency_warmup, args.latency_repeats)
            rows += latency_rows(name, shape, exports, lat)
            print(f"{name}: " + ", ".join(f"{p} {t}t {v:.1f} ms" for (p, t), v in lat.items()), file=sys.stderr,
                  flush=True)
    if rows:
        texts.append(latency_table(rows, args.latency_warmup, args.latency_repeats))
        results["latency"] = [{"model": n, "input": s, "fp32_ms": f, "int8_ms": i, "size_bytes": z}
                              for n, s, f, i, z in rows]
    commands.save_results(out, "\n\n".join(texts), results, "bench/quant_gain.py", argv, t_start)
    return 0


if __name__ == "__main__":
    sys.exit(commands.main_guard(main))
