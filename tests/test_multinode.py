"""Two nodes (`--nnodes 2 --rank r --master IP:PORT`, or `--ips A,B`; one process each) train the same student,
bit for bit, as one node with two processes (`--nproc_per_node 2`): CPU, gloo, loopback addresses only."""
import os
import socket
import subprocess
import sys
import time

import numpy as np
import paddle
import psutil
import pytest

from tests.helpers.cli import ROOT, SCRIPTS
from tests.helpers.seg_fixtures import make_tiny_seg

ITERS = 3  # 6 training slices, batch 2 on each of 2 processes: one step per epoch, so 3 epochs of the sampler
TIMEOUT = 240  # seconds for one run (all its processes); a run takes ~15-20 s on one idle core
LOOPBACK = "127.0.0.1"

# The launcher of a CUDA build gives each process a GPU (two processes need two GPUs); this is the CPU/gloo case.
pytestmark = pytest.mark.skipif(paddle.is_compiled_with_cuda(), reason="CPU (gloo) multi-process test")


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    return make_tiny_seg(str(tmp_path_factory.mktemp("multinode_seg")))


def free_port(host=LOOPBACK):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def clean_env():
    """This environment without anything of an enclosing distributed run (the launcher would take it over)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PADDLE_", "FLAGS_selected_", "DISTRIBUTED_TRAINER_")) and k != "POD_IP"}
    env["OMP_NUM_THREADS"] = "1"
    return env


def launch(launch_args, log_dir, script_args, host=LOOPBACK):
    """Start `python -m paddle.distributed.launch` (ended with kill()). `--host`: the launcher would otherwise
    put this machine's address in the endpoints."""
    os.makedirs(log_dir, exist_ok=True)
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--host", host, *launch_args,
           "--log_dir", str(log_dir), os.path.join(ROOT, SCRIPTS["distill_train"]), *script_args]
    out = open(os.path.join(log_dir, "launch.out"), "w")
    try:
        return subprocess.Popen(cmd, cwd=ROOT, env=clean_env(), stdout=out, stderr=subprocess.STDOUT)
    finally:
        out.close()  # the child holds its own descriptor


def run_all(procs, log_dirs, timeout=TIMEOUT):
    """Wait for every process, with one deadline for all, and stop waiting as soon as one fails (its peer
    would wait for it). What still runs then is killed with its process group; the assertion shows the logs."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            codes = [proc.poll() for proc in procs]
            if all(c is not None for c in codes) or any(c not in (None, 0) for c in codes):
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert codes == [0] * len(procs), (f"exit codes {codes} (None: still running, killed; limit {timeout} s)\n"
                                           + read_logs(log_dirs))
    finally:
        for proc in procs:
            kill(proc)


def kill(proc):
    """End a launcher and its workers. The launcher starts each worker in a session of its own (setsid), so
    they are found first as its descendants; the launcher is asked to stop (SIGTERM: it ends its workers),
    then whatever is left is killed by pid (psutil makes sure a pid still is the process it found)."""
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
    for child in family:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=30)


def read_logs(log_dirs, tail=3000):
    text = []
    for d in log_dirs:
        for name in sorted(os.listdir(d)) if os.path.isdir(d) else ():
            if name == "launch.out" or name.startswith("workerlog"):
                with open(os.path.join(d, name), errors="replace") as f:
                    text.append(f"--- {os.path.join(d, name)}\n{f.read()[-tail:]}")
    return "\n".join(text)


def load_state(path):
    return {k: np.asarray(v) for k, v in paddle.load(str(path)).items()}


def script_args(seg, save_dir):
    return [str(a) for a in ("-c", seg["feat"], "-t", seg["teacher"], "--allow_untrained_teacher", "--iters", ITERS,
                             "--save_interval", 1, "--log_iters", 1, "--seed", 3, "--device", "cpu",
                             "--save_dir", save_dir)]


@pytest.fixture(scope="module")
def one_node(seg, tmp_path_factory):
    """The reference: one launcher, `--nproc_per_node 2`."""
    root = tmp_path_factory.mktemp("one_node")
    logs = root / "log"
    run_all([launch(["--nproc_per_node", "2"], logs, script_args(seg, root / "run"))], [logs])
    check_two_processes(logs / "workerlog.0")
    return root / "run"


def run_two_nodes(seg, tmp_path, node_flags, hosts=(LOOPBACK, LOOPBACK)):
    """Two launchers side by side, as on two machines (node_flags(r): the launcher flags of node r)."""
    node_logs = [tmp_path / f"log_node{r}" for r in (0, 1)]
    procs = []
    try:
        for r in (0, 1):
            procs.append(launch([*node_flags(r), "--nproc_per_node", "1"], node_logs[r],
                                script_args(seg, tmp_path / "run"), host=hosts[r]))
        run_all(procs, node_logs)
    finally:
        for proc in procs:  # run_all kills what it waited for; this covers a failure to start the second node
            kill(proc)
    # the job really spans the two launchers: node 0's worker logs 2 processes, node 1's (global rank 1) nothing
    check_two_processes(node_logs[0] / "workerlog.0")
    with open(node_logs[1] / "workerlog.0") as f:
        assert "cwd_stage2" not in f.read()
    return tmp_path / "run"


def check_two_processes(worker_log):
    with open(worker_log) as f:
        log = f.read()
    assert f"for {ITERS} iterations" in log and "x 2 process(es)" in log, log[-3000:]
    assert "cwd_stage2" in log  # the feature pair (with a 1x1conv connector) trained


def assert_same_run(one, two):
    # Bit-equal: with two processes every gradient all-reduce adds exactly two numbers, and floating-point
    # addition is commutative, so the order the ring (one node or two) adds them in changes nothing; both
    # runs give global rank 0 and 1 the same data shards, seeds and initial weights (BN running statistics
    # are those of rank 0, which saves, in both).
    for it in range(1, ITERS + 1):
        for name in ("model.pdparams", "connectors.pdparams"):
            a, b = load_state(one / f"iter_{it}" / name), load_state(two / f"iter_{it}" / name)
            assert sorted(a) == sorted(b), name
            differ = [k for k in a if not np.array_equal(a[k], b[k])]
            assert not differ, f"iter_{it}/{name}: {len(differ)}/{len(a)} tensors differ, e.g. " + ", ".join(
                f"{k} (max |diff| {np.abs(a[k] - b[k]).max():.3g})" for k in differ[:5])
    # and the weights did move between checkpoints (the comparison is not of untouched initialisations)
    first, last = load_state(one / "iter_1" / "model.pdparams"), load_state(one / f"iter_{ITERS}" / "model.pdparams")
    assert any(not np.array_equal(first[k], last[k]) for k in first if not k.endswith(("_mean", "_variance")))


def test_two_nodes_with_master_train_the_same_student_as_one_node(seg, one_node, tmp_path):
    port = free_port()  # the rendezvous (the launchers' HTTP master) on 127.0.0.1:port
    two = run_two_nodes(seg, tmp_path, lambda r: ["--nnodes", "2", "--rank", str(r), "--master", f"{LOOPBACK}:{port}"])
    assert_same_run(one_node, two)


def test_two_nodes_with_ips_train_the_same_student_as_one_node(seg, one_node, tmp_path):
    """`--ips A,B` (the same command on every node; a node's rank is its place in the list, found from its
    address, `--host` here): two loopback addresses stand for the two machines (the launcher refuses
    127.0.0.1 in a list of several)."""
    hosts = ("127.0.0.2", "127.0.0.3")
    try:
        free_port(hosts[1])
    except OSError:
        pytest.skip("this system routes only 127.0.0.1 to the loopback interface")
    port = free_port(hosts[0])  # each node's first process listens on its address:port; node 0's is the master
    two = run_two_nodes(seg, tmp_path, lambda r: ["--ips", ",".join(hosts), "--start_port", str(port)], hosts)
    assert_same_run(one_node, two)
