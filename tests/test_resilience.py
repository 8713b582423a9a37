"""Stopping and resuming safely: SIGTERM saves and exits 143, a kill during a save loses nothing that was
saved before, and `--resume_model auto` finds the newest complete checkpoint; every resumed run ends with
the weights of an unbroken one."""
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import paddle
import pytest

from slim.engine.checkpoint import read_checkpoint
from tests.helpers.cli import ROOT, SCRIPTS, run_tool
from tests.helpers.seg_fixtures import make_tiny_seg

ITERS = 8
COMMON = ["--iters", ITERS, "--log_iters", 1, "--seed", 3, "--device", "cpu"]


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    """The tiny segmentation data and an unbroken reference run with iter_2, iter_4, iter_6 and iter_8."""
    root = tmp_path_factory.mktemp("resilience")
    paths = make_tiny_seg(str(root))
    paths["root"] = root
    paths["unbroken"] = root / "unbroken"
    assert run_tool("train", "--config", paths["teacher"], *COMMON, "--save_interval", 2,
                    "--save_dir", paths["unbroken"]) == 0
    return paths


def read(path):
    with open(path) as f:
        return f.read()


def start(seg, save_dir, *extra, env=None):
    cmd = [sys.executable, os.path.join(ROOT, SCRIPTS["train"]), "--config", seg["teacher"],
           *[str(a) for a in COMMON], "--save_dir", str(save_dir), *[str(a) for a in extra]]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})))


def read_until(proc, text, timeout=120):
    """The output of proc up to and including the first line that contains `text`."""
    seen, deadline = "", time.time() + timeout
    while text not in seen and time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
    assert text in seen, seen
    return seen


def finish(proc, seen=""):
    rest, _ = proc.communicate(timeout=120)
    return seen + rest


def assert_bit_equal(dir_a, dir_b):
    """Weights, optimizer state and schedule position of two checkpoints are identical, bit for bit."""
    for name in ("model.pdparams", "model.pdopt"):
        a, b = paddle.load(str(dir_a / name)), paddle.load(str(dir_b / name))
        assert sorted(a) == sorted(b), name
        for key in a:
            if isinstance(a[key], dict):  # the learning-rate schedule
                assert a[key] == b[key], f"{name}: {key}"
            else:
                assert np.array_equal(a[key].numpy(), b[key].numpy()), f"{name}: {key}"


def checkpoints(save_dir):
    return sorted((n for n in os.listdir(save_dir) if n.startswith("iter_")), key=lambda n: int(n[5:]))


def test_sigterm_saves_exits_143_and_auto_resume_ends_bit_equal(seg, capsys):
    out = seg["root"] / "sigterm"
    proc = start(seg, out, "--save_interval", 100)
    seen = read_until(proc, f"iter: 2/{ITERS}")
    proc.send_signal(signal.SIGTERM)
    output = finish(proc, seen)
    assert proc.returncode == 143, output
    saved = checkpoints(out)
    assert len(saved) == 1, saved
    stopped_at = int(saved[0][5:])
    assert 2 <= stopped_at < ITERS
    line = (f"stopped by SIGTERM at iteration {stopped_at}/{ITERS}; checkpoint {out / saved[0]}. Continue with "
            f"the same command and --resume_model auto (or --resume_model {out / saved[0]}).")
    assert line in read(out / "record.txt")
    assert output.rstrip().endswith(line)  # the last words on stderr
    assert read_checkpoint(str(out / saved[0]))["state"]["iter"] == stopped_at
    assert not [n for n in os.listdir(out) if ".tmp-" in n]

    assert run_tool("train", "--config", seg["teacher"], *COMMON, "--save_interval", 100, "--save_dir", out,
                    "--resume_model", "auto") == 0
    log = read(out / "record.txt")
    assert f"--resume_model auto: the newest complete checkpoint is {out / saved[0]}" in log
    assert f"resumed from {out / saved[0]} at iteration {stopped_at}" in log
    assert_bit_equal(seg["unbroken"] / f"iter_{ITERS}", out / f"iter_{ITERS}")


def test_sigterm_to_the_whole_process_group_with_loader_workers_still_saves(seg):
    """A scheduler (or `kill -- -PGID`) sends SIGTERM to every process of the job, the data-loading workers
    included: they leave the stop to the training process, which finishes its step, saves and exits 143."""
    out = seg["root"] / "sigterm_group"
    cmd = [sys.executable, os.path.join(ROOT, SCRIPTS["train"]), "--config", seg["teacher"],
           *[str(a) for a in COMMON], "--save_interval", "100", "--num_workers", "2", "--save_dir", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), start_new_session=True)
    seen = read_until(proc, f"iter: 2/{ITERS}")
    os.killpg(proc.pid, signal.SIGTERM)
    output = finish(proc, seen)
    assert proc.returncode == 143, output
    saved = checkpoints(out)
    assert len(saved) == 1 and f"stopped by SIGTERM at iteration {saved[0][5:]}/{ITERS}" in output, output
    assert read_checkpoint(str(out / saved[0]))["state"]["iter"] == int(saved[0][5:])
    # resumed with workers again, to the end: the same weights as the unbroken run without workers
    assert run_tool("train", "--config", seg["teacher"], *COMMON, "--save_interval", 100, "--num_workers", 2,
                    "--save_dir", out, "--resume_model", "auto") == 0
    assert_bit_equal(seg["unbroken"] / f"iter_{ITERS}", out / f"iter_{ITERS}")


def signal_again_during_the_save(seg, out, sig, repeats):
    """Send `sig` once training runs, then `repeats` more times while the stop's (slowed) save is under way."""
    proc = start(seg, out, "--save_interval", 100, env={"SLIM_TEST_SLOW_SAVE": "1.5"})
    seen = read_until(proc, f"iter: 1/{ITERS}")
    proc.send_signal(sig)
    deadline = time.time() + 60
    while not [n for n in os.listdir(out) if n.startswith(".iter_")] and time.time() < deadline:
        time.sleep(0.02)  # the stop's save is under way once its temporary folder exists
    for _ in range(repeats):
        proc.send_signal(sig)
    return finish(proc, seen), proc


def test_a_second_sigterm_during_the_save_leaves_a_loadable_checkpoint(seg):
    out = seg["root"] / "twice"
    output, proc = signal_again_during_the_save(seg, out, signal.SIGTERM, repeats=2)
    assert proc.returncode == 143, output
    saved = checkpoints(out)
    assert len(saved) == 1 and f"stopped by SIGTERM at iteration {saved[0][5:]}/" in output, output
    ckpt = read_checkpoint(str(out / saved[0]))
    assert ckpt["state"]["iter"] == int(saved[0][5:]) and ckpt["model"] and ckpt["optimizer"]
    assert not [n for n in os.listdir(out) if ".tmp-" in n]


def test_a_second_ctrl_c_interrupts_at_once_and_leaves_no_partial_checkpoint(seg):
    out = seg["root"] / "ctrl_c_twice"
    output, proc = signal_again_during_the_save(seg, out, signal.SIGINT, repeats=1)
    assert proc.returncode == 130, output
    assert "stopped at once without saving. No checkpoint of this run was saved." in output
    assert os.listdir(out) and not [n for n in os.listdir(out) if "iter_" in n]  # nor a temporary folder


def test_kill_during_a_save_keeps_the_previous_checkpoint_and_auto_skips_the_partial_one(seg):
    out = seg["root"] / "killed"
    proc = start(seg, out, "--save_interval", 2, env={"SLIM_TEST_KILL_DURING_SAVE": "4"})
    output = finish(proc)
    assert proc.returncode == -signal.SIGKILL, output
    assert checkpoints(out) == ["iter_2"]
    partial = [n for n in os.listdir(out) if n.startswith(".iter_4.tmp-")]
    assert len(partial) == 1 and os.listdir(out / partial[0]) == ["model.pdparams"]
    assert read_checkpoint(str(out / "iter_2"))["state"]["iter"] == 2

    assert run_tool("train", "--config", seg["teacher"], *COMMON, "--save_interval", 2, "--save_dir", out,
                    "-r", "auto") == 0
    log = read(out / "record.txt")
    assert f"skipped {out / partial[0]}: the temporary folder of a save that did not finish" in log
    assert f"resumed from {out / 'iter_2'} at iteration 2" in log
    assert_bit_equal(seg["unbroken"] / f"iter_{ITERS}", out / f"iter_{ITERS}")


def test_auto_skips_truncated_and_incomplete_checkpoints(seg):
    out = seg["root"] / "damaged"
    os.makedirs(out)
    for n in (2, 4, 6):
        shutil.copytree(seg["unbroken"] / f"iter_{n}", out / f"iter_{n}")
    os.remove(out / "iter_6" / "model.pdopt")
    model = out / "iter_4" / "model.pdparams"
    with open(model, "r+b") as f:
        f.truncate(os.path.getsize(model) // 2)
    assert run_tool("train", "--config", seg["teacher"], *COMMON, "--save_interval", 2, "--save_dir", out,
                    "--resume_model", "auto") == 0
    log = read(out / "record.txt")
    assert f"--resume_model auto: skipped {out / 'iter_6'}: no model.pdopt" in log
    assert f"--resume_model auto: skipped {out / 'iter_4'}: model.pdparams cannot be read, it is truncated" in log
    assert f"resumed from {out / 'iter_2'} at iteration 2" in log
    assert_bit_equal(seg["unbroken"] / f"iter_{ITERS}", out / f"iter_{ITERS}")


def test_auto_with_no_checkpoint_starts_a_new_run(seg, tmp_path):
    out = tmp_path / "fresh"
    assert run_tool("train", "--config", seg["teacher"], "--iters", 1, "--seed", 3, "--device", "cpu",
                    "--save_dir", out, "--resume_model", "auto") == 0
    log = read(out / "record.txt")
    assert f"--resume_model auto: no complete checkpoint in {out}; starting a new run from iteration 0" in log
    assert "resumed from" not in log and checkpoints(out) == ["iter_1"]


def test_resuming_with_more_iterations_extends_the_schedule(seg):
    out = seg["root"] / "longer"
    os.makedirs(out)
    shutil.copytree(seg["unbroken"] / f"iter_{ITERS}", out / f"iter_{ITERS}")
    longer = ITERS + 2
    assert run_tool("train", "--config", seg["teacher"], *COMMON, "--iters", longer, "--save_interval", 1,
                    "--save_dir", out, "--resume_model", "auto") == 0  # the last --iters wins
    log = read(out / "record.txt")
    assert f"the learning-rate schedule now runs to iteration {longer}" in log
    assert f"iter: {longer}/{longer}" in log and checkpoints(out)[-1] == f"iter_{longer}"
    # PolynomialDecay(0.01, power 0.9) over the new length; the first resumed step did not run at the
    # old schedule's final rate of 0
    assert f"iter: {ITERS + 1}/{longer}" in log
    expected = 0.01 * (1 - (ITERS + 1) / longer) ** 0.9
    assert f"lr: {expected:.6f}" in log.split(f"iter: {ITERS + 1}/{longer}")[1].split("\n")[0]
    before = paddle.load(str(out / f"iter_{ITERS}" / "model.pdparams"))
    after = paddle.load(str(out / f"iter_{ITERS + 1}" / "model.pdparams"))
    assert any(not bool((before[k] == after[k]).all()) for k in before if "weight" in k)
    state = read_checkpoint(str(out / f"iter_{longer}"))["optimizer"]["LR_Scheduler"]
    assert state["last_epoch"] == longer and state["last_lr"] == 0


def _worker_pid(launcher_pid, rank):
    """The pid of the launched process of `rank` (a child of the launcher)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:
            continue
        if parent == launcher_pid and f"PADDLE_TRAINER_ID={rank}".encode() in environ:
            return int(pid)
    return None


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the launched processes in /proc")
def test_two_processes_stop_at_the_same_iteration_when_one_gets_sigterm(seg, tmp_path):
    out, logs = tmp_path / "run", tmp_path / "log"
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", str(logs),
           os.path.join(ROOT, SCRIPTS["train"]), "--config", seg["teacher"], "--iters", "1000", "--log_iters", "1",
           "--save_interval", "1000", "--seed", "0", "--device", "cpu", "--save_dir", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        deadline = time.time() + 180
        while time.time() < deadline and "iter: 2/1000" not in (
                (logs / "workerlog.0").read_text() if (logs / "workerlog.0").exists() else ""):
            time.sleep(0.2)
        rank1 = _worker_pid(proc.pid, 1)
        assert rank1 is not None
        os.kill(rank1, signal.SIGTERM)  # rank 0 gets nothing: it learns of the stop from rank 1
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # only when the test failed: leave no process behind
            for pid in filter(None, (_worker_pid(proc.pid, r) for r in (0, 1))):
                os.kill(pid, signal.SIGKILL)
            proc.kill()
            proc.wait()
    worker0, worker1 = (logs / "workerlog.0").read_text(), (logs / "workerlog.1").read_text()
    saved = checkpoints(out)
    assert len(saved) == 1, output[-2000:] + worker0[-3000:] + worker1[-3000:]
    line = f"stopped by SIGTERM at iteration {saved[0][5:]}/1000; checkpoint {out / saved[0]}."
    assert line in worker0 and line in worker1, worker0[-3000:] + worker1[-3000:]
    ckpt = read_checkpoint(str(out / saved[0]))
    assert ckpt["state"]["iter"] == int(saved[0][5:]) and len(ckpt["state"]["rng"]) == 2
