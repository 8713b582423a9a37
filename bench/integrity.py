"""What the integrity checks cost: digests, and a ResNet50-sized checkpoint written, verified and loaded.

    python bench/integrity.py [--reps 5] [--out DIR]

1. Digest speed on 256 MB in memory: sha256 (what checkpoint manifests use), blake2b and zlib.crc32 (the
   teacher cache's per-entry checksum).
2. A checkpoint of paddleseg's DeepLabV3P ResNet50_vd (the tutorial's teacher, 2 classes) with a Momentum
   optimizer's state, written by the trainer's save_checkpoint into a temporary folder: the time of the whole
   save, of writing its manifest (sha256 of every file) alone, of verifying the folder (what resuming and
   `auto` do before loading) and, for scale, of reading it back with paddle.load.
Each figure is the median of `--reps` repetitions; the page cache holds the files (as right after a save, and
as for most resumes).
The teacher cache's checks are measured on real cached steps by bench/teacher_cache.py.
"""
import argparse
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def timed(fn, reps):
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def digest_speeds(reps, size=256 << 20):
    data = os.urandom(size)
    rows = []
    for name, fn in (("sha256", lambda: hashlib.sha256(data).digest()),
                     ("blake2b", lambda: hashlib.blake2b(data).digest()),
                     ("crc32 (zlib)", lambda: zlib.crc32(data))):
        seconds = timed(fn, reps)
        rows.append((name, size / seconds / 1e9))
    return rows


def checkpoint_costs(reps, out):
    import paddle

    from slim.apps.launch import load_task_config
    from slim.engine import checkpoint
    task, cfg = load_task_config(os.path.join(ROOT, "configs/seg/deeplabv3p_resnet50_vd_nuclei_teacher.yml"))
    model = task.build_model(cfg)
    optimizer = paddle.optimizer.Momentum(learning_rate=0.01, momentum=0.9, parameters=model.parameters())
    x = paddle.randn([1, 3, 64, 64])
    model(x)[0].mean().backward()  # one step, so that the optimizer has its velocity state
    optimizer.step()
    state, opt_state = model.state_dict(), optimizer.state_dict()
    params = sum(int(p.size) for p in model.parameters())
    folder = os.path.join(out, "iter_1")

    def save():
        checkpoint.save_checkpoint(folder, state, optimizer_state=opt_state, train_state={"iter": 1})

    save_s = timed(save, reps)
    size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
    manifest_s = timed(lambda: checkpoint.write_manifest(folder), reps)
    problem = checkpoint.verify_files(folder)
    if problem:
        raise RuntimeError(problem)
    verify_s = timed(lambda: checkpoint.verify_files(folder), reps)
    load_s = timed(lambda: (paddle.load(os.path.join(folder, checkpoint.MODEL_FILE)),
                            paddle.load(os.path.join(folder, checkpoint.OPT_FILE))), reps)
    return {"params": params, "bytes": size, "save": save_s, "manifest": manifest_s, "verify": verify_s,
            "load": load_s}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", default=None, help="folder for the checkpoint (default: a temporary one)")
    args = p.parse_args()
    import platform
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', '2')}; medians of {args.reps}", flush=True)

    print("\n| digest | GB/s (256 MB in memory) |")
    print("|---|---|")
    for name, speed in digest_speeds(args.reps):
        print(f"| {name} | {speed:.2f} |")

    out = args.out or tempfile.mkdtemp(prefix="slim-integrity-")
    try:
        c = checkpoint_costs(args.reps, out)
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    print(f"\n| checkpoint | size | save (s, manifest included) | manifest alone (s) | verify (s) | paddle.load "
          f"of weights and optimizer (s) | verify / load |")
    print("|---|---|---|---|---|---|---|")
    print(f"| DeepLabV3P ResNet50_vd, {c['params'] / 1e6:.1f}M parameters, Momentum | {c['bytes'] / 2 ** 20:.0f} MB | "
          f"{c['save']:.3f} | {c['manifest']:.3f} | {c['verify']:.3f} | {c['load']:.3f} | "
          f"{c['verify'] / c['load']:.2f} |")


if __name__ == "__main__":
    main()
