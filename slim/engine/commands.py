"""Running the package's own commands from the demos and benchmarks (tools/demo.py, bench/*.py).

Each command runs from the repository root; it is printed before it runs, the lines worth seeing are
streamed as it goes, and its whole output is kept in a log file, which a failure points to.
"""
import os
import subprocess
import sys
import time

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


def run(cmd, log_path, show=SHOW, echo=True, every=1, width=170, threads=2):
    """Run cmd; print it and the lines containing one of `show` (every `every`-th [TRAIN] line), write all
    of its output to log_path. Returns the wall time in seconds; raises CommandFailed on a non-zero exit."""
    cmd = [str(c) for c in cmd]
    if echo:
        print("$ " + " ".join(cmd), flush=True)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(threads))
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
                print("    " + line.rstrip()[-width:], flush=True)
        code = proc.wait()
    if code != 0:
        raise CommandFailed(cmd, code, log_path)
    return time.time() - t0


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
