"""Resume equality for the end-to-end training tests: interrupt a run, resume it, compare with an unbroken one."""
import numpy as np
import paddle
import pytest

from slim.engine.trainer import Trainer
from tests.helpers.cli import run_tool


def run_interrupted(at_iter, tool, *args):
    """Run `tool` with Trainer.run_step raising KeyboardInterrupt once `at_iter` steps are done; its exit code."""
    original = Trainer.run_step

    def interrupt(self, batch):
        if self.iter == at_iter:
            raise KeyboardInterrupt
        return original(self, batch)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "run_step", interrupt)
        return run_tool(tool, *args)


def assert_same_weights(dir_a, dir_b, files=("model.pdparams",)):
    """The checkpoint folders hold the same keys and (nearly) equal values in each of `files`."""
    for name in files:
        a, b = paddle.load(str(dir_a / name)), paddle.load(str(dir_b / name))
        assert sorted(a) == sorted(b)
        for key in a:
            np.testing.assert_allclose(a[key].numpy(), b[key].numpy(), rtol=1e-5, atol=1e-6, err_msg=f"{name}: {key}")


def logged_losses(record, tag):
    """The `loss:` values of the log lines of record.txt that contain `tag` (e.g. "iter: 5/5")."""
    with open(record) as f:
        return [line.split("loss: ")[1].split(" ")[0] for line in f if tag in line]
