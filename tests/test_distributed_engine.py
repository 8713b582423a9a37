import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_two_processes_keep_student_and_connectors_in_sync(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir",
           str(tmp_path / "log"), os.path.join(ROOT, "tests", "helpers", "dp_distill.py"), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    logs = "".join(p.read_text() for p in (tmp_path / "log").glob("workerlog.*"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + logs[-4000:]
    a, b = np.load(tmp_path / "rank0.npz"), np.load(tmp_path / "rank1.npz")
    assert sorted(a.files) == sorted(b.files)
    assert any(k.startswith("connector.") for k in a.files)
    for key in a.files:
        if key.endswith("_mean") or key.endswith("_variance"):
            continue  # BN running statistics are per process, as in any DataParallel run
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)
