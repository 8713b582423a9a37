import os
import sys

import numpy as np
import paddle
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

paddle.set_device("cpu")


@pytest.fixture(autouse=True)
def _seed():
    paddle.seed(0)
    np.random.seed(0)
    yield
