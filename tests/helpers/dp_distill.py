"""Run under `paddle.distributed.launch`: a DataParallel student with a connector, different data per
rank; each rank saves its student and connector weights so the test can compare them."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402
import paddle  # noqa: E402
import paddle.distributed as dist  # noqa: E402

from slim.distill import Distiller  # noqa: E402
from tests.helpers.models import TwoStage  # noqa: E402


def main(out_dir):
    dist.init_parallel_env()
    rank = dist.get_rank()
    paddle.seed(0)
    student, teacher = TwoStage(4), TwoStage(8)
    student = paddle.DataParallel(student)
    pairs = [{"student": "stage1", "teacher": "stage1", "loss": "L2Loss", "align": {"type": "1x1conv"}}]
    distiller = Distiller(student, teacher, pairs)
    rng = np.random.RandomState(100 + rank)  # each rank sees different data
    x = paddle.to_tensor(rng.randn(2, 3, 16, 16).astype("float32"))
    distiller.build(x)
    opt = paddle.optimizer.SGD(learning_rate=0.05, parameters=distiller.parameters())
    for _ in range(3):
        x = paddle.to_tensor(rng.randn(2, 3, 16, 16).astype("float32"))
        out = distiller(x)
        (out.student_out[0].mean() + out.loss).backward()
        opt.step()
        opt.clear_grad()
    weights = {f"student.{k}": v.numpy() for k, v in student._layers.state_dict().items()}
    weights.update({f"connector.{k}": v.numpy() for k, v in distiller.connector_state_dict().items()})
    np.savez(os.path.join(out_dir, f"rank{rank}.npz"), **weights)


if __name__ == "__main__":
    main(sys.argv[1])
