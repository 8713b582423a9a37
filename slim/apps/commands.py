"""Running the package's own commands from the demos and benchmarks (tools/demo.py, bench/*.py).

Each command runs from the repository root; it is printed before it runs, the lines worth seeing are
streamed as it goes, and its whole output is kept in a log file, which a failure points to.
"""
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PY = sys.executable
SHOW = ("[TRAIN]", "[EVAL] #Images", "error", "Error", "Traceback")


class CommandFailed(RuntimeError):
    """A command exited non-zero; the message names it, its exit code and its log, with the log's end."""

    def __init__(self, cmd, code, log_path):
        with open(log_path) as f:
            tail = f.read()[-3000:]
        super().__init__(f"{' '.join(map(str, cmd))} failed (exit {code}); the full output is in {log_path}:\n{tail}")
        self.code = code


def run(cmd, log_path, show=SHOW, echo=True, every=1, width=170, threads=None, label=None):
    """Run cmd; print it and the lines containing one of `show` (every `every`-th [TRAIN] line), write all
    of its output to log_path. Returns the wall time in seconds; raises CommandFailed on a non-zero exit.
    `threads`: the command's OMP_NUM_THREADS (default: the caller's, else 2). `label` starts each shown
    line (for commands running side by side)."""
    indent = f"    [{label}] " if label else "    "
    cmd = [str(c) for c in cmd]
    if echo:
        print("$ " + " ".join(cmd), flush=True)
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    env.setdefault("OMP_NUM_THREADS", "2")
    t0, shown = time.time(), 0
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for line in proc.stdout:
            log.write(line)
            log.flush()
            if echo and any(s in line for s in show):
                if "[TRAIN]" in line:
                    shown += 1
                    if shown % every:
                        continue
                print(indent + line.rstrip()[-width:], flush=True)
        code = proc.wait()
    if code != 0:
        raise CommandFailed(cmd, code, log_path)
    return time.time() - t0


class Jobs:
    """Independent commands run `jobs` at a time, each on its share of the cores (OMP_NUM_THREADS).

        with Jobs(2) as jobs:
            teacher = jobs.submit(run, teacher_cmd, "teacher.log")   # a Future; .result() waits
            alone = jobs.submit(run, student_cmd, "alone.log")

    On 2 cores, two single-threaded training runs side by side finish sooner than the same runs one after
    the other on two threads each (Paddle's CPU kernels gain less than 2x from a second thread). With
    jobs=1 each command runs when submitted, as a plain call would (and a failure stops at once)."""

    def __init__(self, jobs=1):
        self.jobs = max(int(jobs), 1)
        self.threads = max((os.cpu_count() or 1) // self.jobs, 1) if self.jobs > 1 else None
        self.pool = ThreadPoolExecutor(self.jobs) if self.jobs > 1 else None

    def submit(self, fn, *args, **kwargs):
        """fn(*args, **kwargs) in a worker; fn receives `threads=` when it runs a command (commands.run)."""
        if self.threads is not None:
            kwargs.setdefault("threads", self.threads)
        if self.pool is None:
            return _Done(fn(*args, **kwargs))
        return self.pool.submit(fn, *args, **kwargs)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.shutdown(wait=exc[0] is None, cancel_futures=exc[0] is not None)


class _Done:
    """The result of a command already run (Jobs(1)), read like a Future's."""

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


def last_checkpoint(run_dir):
    """RUN_DIR/iter_N/model.pdparams of the largest N."""
    iters = [int(n[5:]) for n in os.listdir(run_dir) if n.startswith("iter_") and n[5:].isdigit()]
    if not iters:
        raise RuntimeError(f"no checkpoint (iter_N/) in {run_dir}")
    return os.path.join(run_dir, f"iter_{max(iters)}", "model.pdparams")


def main_guard(fn, *args, **kwargs):
    """Call fn; a failed command ends the program with its message and exit code instead of a traceback."""
    try:
        return fn(*args, **kwargs)
    except CommandFailed as e:
        print(str(e), file=sys.stderr, flush=True)
        return e.code or 1


def save_results(out, text, data=None, script=None, argv=None, started=None):
    """Print a benchmark's `text` and keep it in OUT/results.md (with `data`, the raw figures, in results.json).
    With `script` and `started` (time.time() at its start) a last line gives the total wall time and the command
    that printed it."""
    if script is not None and started is not None:
        args = sys.argv[1:] if argv is None else argv
        text += f"\n\ntotal wall time {time.time() - started:.0f} s; command: python {script} " + " ".join(map(str, args))
    print("\n" + text, flush=True)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text + "\n")
    if data is not None:
        import json
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump(data, f, indent=1)
    return text
