"""A PaddleClas MGD config under paddle.distributed.launch (2 CPU processes): the generator, which has parameters,
runs inside the DataParallel model's forward (outside it, DataParallel's gradient reducer fails); both processes
fill one teacher-output cache, and a second launch reads it and logs the same losses."""
import os
import subprocess
import sys

import numpy as np
import paddle

from slim.datasets import mnist
from slim.tasks.ppcls.arch import backbone_factory
from tests.helpers.cli import logged_losses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_two_processes_train_a_frozen_teacher_mgd_config(tmp_path):
    data = str(tmp_path / "data")
    mnist.prepare(data, per_class=2)
    teacher = str(tmp_path / "teacher.pdparams")
    paddle.save(backbone_factory("ResNet18")(class_num=10).state_dict(), teacher)  # any full weights
    opts = [f"DataLoader.Train.dataset.image_root={data}",
            f"DataLoader.Train.dataset.cls_label_path={data}/train_list.txt",
            f"DataLoader.Eval.dataset.image_root={data}", f"DataLoader.Eval.dataset.cls_label_path={data}/val_list.txt",
            "DataLoader.Train.sampler.batch_size=4", "Arch.models.0.Teacher.name=ResNet18",
            f"Arch.models.0.Teacher.pretrained={teacher}", 'Arch.models.0.Teacher.return_patterns=["blocks[7]"]',
            "Loss.Train.1.DistillationPairLoss.t_key=blocks[7]", "Global.eval_during_train=False",
            "Optimizer.lr.values=[0.001, 0.0001, 0.00001, 0.000001]"]
    cache = ["--teacher_cache", str(tmp_path / "cache"), "--teacher_cache_dtype", "float32"]
    for name in ("run", "cached"):
        cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
               "--log_dir", str(tmp_path / f"log_{name}"),
               os.path.join(ROOT, "slim", "distill", "distill_train.py"), "-c",
               os.path.join(ROOT, "configs", "ppcls", "resnet34_distill_resnet18_mgd.yaml"), "-o", *opts, "--iters",
               "2", "--save_interval", "2", "--log_iters", "1", "--seed", "0", "--save_dir", str(tmp_path / name), *cache]
        proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True,
                              text=True, timeout=300)
        logs = "".join(p.read_text() for p in (tmp_path / f"log_{name}").glob("workerlog.*"))
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + logs[-4000:]
    record = (tmp_path / "run" / "record.txt").read_text()
    assert "batch 4 x 2 process(es)" in record and "loss_mgd_0_Student_Teacher:" in record
    assert "0 sample(s) read, 8 computed" in record  # rank 0's 2 x 4 samples (rank 1 wrote its own)
    assert "8 sample(s) read, 0 computed" in (tmp_path / "cached" / "record.txt").read_text()
    assert logged_losses(tmp_path / "cached") == logged_losses(tmp_path / "run") != []
    state = paddle.load(str(tmp_path / "run" / "iter_2" / "model.pdparams"))
    assert any(k.startswith("loss_layers.0.loss_func.generation") for k in state)
    assert np.isfinite(sum(float(v.numpy().sum()) for v in state.values()))
