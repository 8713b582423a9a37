"""Where does int8 time go? Paddle Inference's op profiler on the fp32 and int8 exports of bench/quant_gain.py's
latency models: milliseconds per run by op type, the convolutions alone, and the oneDNN kernels that ran them.

    python bench/int8_profile.py [--models output/bench/quant_gain/latency_models] [--threads 1] \
        [--warmup 10] [--repeats 30] [--out output/bench/int8_profile]

--models: a folder of `<model>/{fp32,int8,int8_onnx_format}` exports (what `bench/quant_gain.py --latency_only`
writes); absent, they are made here the same way (random weights, int8 scales from two random batches). Each export
runs in its own process: a predictor with `enable_profile()`, --warmup runs, the profiler reset, --repeats profiled
runs; the op table Paddle prints is read back and divided by the repeats (steady state, the first runs' primitive
creation left out). A second short process with ONEDNN_VERBOSE=1 names oneDNN's instruction set and the convolution
kernels it picked. The tables: per model and precision the time of all ops per run, of the convolutions
(`fused_conv2d`, `conv2d`, `depthwise_conv2d`), of quantize/dequantize/requantize, and of the rest (with the op
types costing most); int8/fp32 ratios of the total and of the convolutions alone. The profiler's own overhead is in
every figure alike; other processes on the machine add noise.
"""
import argparse
import os
import re
import subprocess
import sys
import time
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from slim.apps import commands  # noqa: E402

CONV_OPS = ("fused_conv2d", "conv2d", "depthwise_conv2d")
QUANT_OPS = ("quantize", "dequantize", "requantize")
ROW = re.compile(r"^(?:thread\d+::)?(?:onednn_op\.|pd_op\.)?([A-Za-z0-9_:.]+)\s+(\d+)\s+([0-9.e+-]+)\s")
SKIP = ("Executor::", "load_combine", "PhiKernelInstruction", "infermeta")


def parse_profile(text, repeats):
    """{op type: (calls per run, ms per run)} from the first event table Paddle's profiler printed after the line
    'PROFILE-START' (the table of all threads). Indented rows (an op's parts) and executor rows are left out."""
    text = text.split("PROFILE-START", 1)[-1]
    ops, in_table = {}, False
    for line in text.splitlines():
        if line.startswith("Event ") and "Calls" in line:
            if in_table:
                break
            in_table = True
            continue
        if not in_table:
            continue
        if line.startswith("---") and ops:
            break
        if not line or line.startswith(" "):
            continue
        m = ROW.match(line)
        if not m or any(s in m.group(1) for s in SKIP):
            continue
        calls, total = int(m.group(2)), float(m.group(3))
        prev = ops.get(m.group(1), (0.0, 0.0))
        ops[m.group(1)] = (prev[0] + calls / repeats, prev[1] + total / repeats)
    return ops


def split_time(ops):
    """(total, convolutions, quantize ops, rest) in ms per run."""
    conv = sum(ms for op, (_, ms) in ops.items() if op in CONV_OPS)
    quant = sum(ms for op, (_, ms) in ops.items() if op in QUANT_OPS)
    total = sum(ms for _, ms in ops.values())
    return total, conv, quant, total - conv - quant


def _child(folder, precision, threads, shape, warmup, repeats):
    """Runs in its own process: the profiled predictor (the report is printed when it is destroyed)."""
    import numpy as np
    import paddle.inference as pi
    from paddle.base import core

    from slim.quant.inference import InferenceSettings, make_config, pick_model
    config = make_config(*pick_model(folder, precision), InferenceSettings(precision=precision, threads=threads))
    config.enable_profile()
    pred = pi.create_predictor(config)
    handle = pred.get_input_handle(pred.get_input_names()[0])
    x = np.random.RandomState(0).rand(*shape).astype("float32")
    for _ in range(warmup):
        handle.copy_from_cpu(x)
        pred.run()
    core.reset_profiler()
    print("PROFILE-START", flush=True)
    for _ in range(repeats):
        handle.copy_from_cpu(x)
        pred.run()
    del pred


def _run_child(folder, precision, threads, shape, warmup, repeats, log, **env):
    """The output (stdout + stderr, also kept in `log`) and exit code of `_child` in its own process."""
    cmd = [sys.executable, os.path.abspath(__file__), "--_child", folder, precision, str(threads),
           ",".join(map(str, shape)), str(warmup), str(repeats)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                         env=dict(os.environ, OMP_NUM_THREADS=str(threads), **env))
    with open(log, "w") as f:
        f.write(out.stdout + out.stderr)
    return out.stdout + out.stderr, out.returncode


def profile(folder, precision, threads, shape, warmup, repeats, log):
    """{op: (calls, ms) per run} of one export, profiled in a child process (its output kept in `log`)."""
    text, code = _run_child(folder, precision, threads, shape, warmup, repeats, log)
    if code != 0 or "PROFILE-START" not in text:
        raise RuntimeError(f"profiling {folder} ({precision}) failed, exit {code}: see {log}")
    ops = parse_profile(text, repeats)
    if not ops:
        raise RuntimeError(f"no op table in the profiler's output of {folder} ({precision}): see {log}")
    return ops


def onednn_kernels(folder, precision, threads, shape, log):
    """(oneDNN's ISA line, Counter of convolution kernel names per run) from ONEDNN_VERBOSE=1, 3 runs."""
    text, _ = _run_child(folder, precision, threads, shape, 0, 3, log, ONEDNN_VERBOSE="1")
    isa, kernels = "", Counter()
    for line in text.splitlines():
        fields = line.split(",")
        if line.startswith("onednn_verbose") and ",info,cpu,isa:" in line:
            isa = line.split("isa:", 1)[1].strip()
        elif line.startswith("onednn_verbose") and len(fields) > 6 and fields[3] == "exec" \
                and fields[5] == "convolution":
            kernels[fields[6]] += 1
    return isa, Counter({k: v // 3 for k, v in kernels.items()})


def cpu_flags():
    """The CPU's model name and which int8 dot-product extensions it has (from /proc/cpuinfo)."""
    name, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and name == "unknown CPU":
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    return name, {f: f in flags for f in wanted}


def top_rest(ops, n=4):
    rest = [(ms, op, calls) for op, (calls, ms) in ops.items() if op not in CONV_OPS + QUANT_OPS]
    return ", ".join(f"{op} {ms:.2f} ({calls:.0f})" for ms, op, calls in sorted(rest, reverse=True)[:n])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="", help="folder of <model>/{fp32,int8,...} exports (default: made here)")
    p.add_argument("--out", default="output/bench/int8_profile")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--_child", nargs=6, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._child:
        folder, precision, threads, shape, warmup, repeats = args._child
        _child(folder, precision, int(threads), [int(v) for v in shape.split(",")], int(warmup), int(repeats))
        return 0
    t_start = time.time()
    out = os.path.abspath(args.out)
    logs = os.path.join(out, "logs")
    os.makedirs(logs, exist_ok=True)
    import quant_gain
    models_dir = os.path.abspath(args.models) if args.models else os.path.join(out, "latency_models")
    results, lines, isa = {}, [], ""
    for name, config, cfg_dict, shape in quant_gain.LATENCY_MODELS:
        slug = quant_gain.model_slug(name)
        folder = os.path.join(models_dir, slug)
        if not os.path.isdir(os.path.join(folder, "fp32")):
            quant_gain.export_random_model(name, config, cfg_dict, shape, models_dir)
        profiles = {}
        for label, precision in (("fp32", "fp32"), ("int8", "int8"), ("int8_onnx_format", "int8")):
            export = os.path.join(folder, label)
            if not os.path.isdir(export):
                continue
            ops = profile(export, precision, args.threads, shape, args.warmup, args.repeats,
                          os.path.join(logs, f"{slug}_{label}.log"))
            isa, kernels = onednn_kernels(export, precision, args.threads, shape,
                                          os.path.join(logs, f"{slug}_{label}_onednn.log"))
            profiles[label] = {"ops": ops, "kernels": dict(kernels), "split": split_time(ops)}
            total, conv, quant, rest = profiles[label]["split"]
            print(f"{name} {label}: {total:.2f} ms per run (convolutions {conv:.2f}, quantize ops {quant:.2f}, "
                  f"rest {rest:.2f})", file=sys.stderr, flush=True)
        results[name] = {"input": shape, **profiles}
    cpu, flags = cpu_flags()
    lines += [f"Paddle Inference op profiler, batch 1, oneDNN, {args.threads} thread(s); ms per run (op times summed, "
              f"mean of {args.repeats} runs after {args.warmup} warm-up); CPU: {cpu}, oneDNN ISA: {isa or 'unknown'}; "
              + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in flags.items()), "",
              "| model | export | all ops | convolutions (per run) | quantize / dequantize (per run) | rest | "
              "int8 / fp32, all ops | int8 / fp32, convolutions | oneDNN convolution kernels (per run) | "
              "costliest other ops, ms (per run) |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        base = r.get("fp32")
        for label in ("fp32", "int8", "int8_onnx_format"):
            if label not in r:
                continue
            total, conv, quant, rest = r[label]["split"]
            ops = r[label]["ops"]
            n_conv = sum(ops[o][0] for o in CONV_OPS if o in ops)
            n_quant = sum(ops[o][0] for o in QUANT_OPS if o in ops)
            ratio = f"{total / base['split'][0]:.2f}" if base and label != "fp32" else "-"
            conv_ratio = f"{conv / base['split'][1]:.2f}" if base and label != "fp32" else "-"
            kernels = ", ".join(f"{k} ({v})" for k, v in sorted(r[label]["kernels"].items()))
            lines.append(f"| {name} {'x'.join(map(str, r['input'][1:]))} | {label.replace('_', ' ')} | {total:.2f} | "
                         f"{conv:.2f} ({n_conv:.0f}) | {quant:.2f} ({n_quant:.0f}) | {rest:.2f} | {ratio} | "
                         f"{conv_ratio} | {kernels} | {top_rest(ops)} |")
    commands.save_results(out, "\n".join(lines), {"results": results, "args": vars(args), "cpu": cpu,
                                                  "flags": flags, "isa": isa}, "bench/int8_profile.py", argv, t_start)
    return 0


if __name__ == "__main__":
    sys.exit(commands.main_guard(main))
