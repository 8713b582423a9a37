"""Device, threads, seeds and the distributed environment, for every entry point.

Under `python -m paddle.distributed.launch` each process gets a rank; on GPU the backend is NCCL, on
CPU gloo. Single-process CPU runs use every core (Paddle's default is one thread).
"""
import os
import random

import numpy as np
import paddle
import paddle.distributed as dist

from slim.distill.errors import ConfigError


def world_size():
    return dist.get_world_size()


def rank():
    return dist.get_rank()


def is_main_process():
    return rank() == 0


def launched_with_several_processes():
    return int(os.environ.get("PADDLE_TRAINERS_NUM", "1")) > 1


def set_device(device=None):
    """'cpu', 'gpu', 'gpu:1', or None for the GPU when Paddle was built with CUDA and one is visible."""
    if device is None or device == "auto":
        device = "gpu" if paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0 else "cpu"
    if device.startswith("gpu") and not paddle.is_compiled_with_cuda():
        raise ConfigError(f"--device {device} was asked for, but this Paddle build has no CUDA; install "
                          f"paddlepaddle-gpu (requirements-gpu.txt) or use --device cpu.")
    if device.startswith("gpu") and launched_with_several_processes() and ":" not in device:
        device = f"gpu:{int(os.environ.get('FLAGS_selected_gpus', '0').split(',')[0])}"
    paddle.set_device(device)
    if device == "cpu" and not launched_with_several_processes():
        use_all_cores()
    return device


def use_all_cores():
    """Paddle runs CPU kernels on 1 thread unless told; respect OMP_NUM_THREADS when the user set it."""
    import slim
    threads = int(slim.USER_OMP_NUM_THREADS or os.cpu_count() or 1)
    from paddle.base import core
    core.set_num_threads(threads)
    return threads


def init_distributed():
    """Initialise the process group when launched with several processes; returns the world size."""
    if launched_with_several_processes() and not dist.is_initialized():
        dist.init_parallel_env()
    return world_size()


def seed_everything(seed):
    if seed is None:
        return
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    paddle.seed(seed)


def rng_state():
    """Every random state the training loop draws from, picklable."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "paddle": paddle.get_rng_state()}
    if paddle.is_compiled_with_cuda() and paddle.device.get_device().startswith("gpu"):
        state["cuda"] = paddle.get_cuda_rng_state()
    return state


def set_rng_state(state):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    paddle.set_rng_state(state["paddle"])
    if "cuda" in state and paddle.is_compiled_with_cuda() and paddle.device.get_device().startswith("gpu"):
        paddle.set_cuda_rng_state(state["cuda"])


def barrier():
    if world_size() > 1:
        dist.barrier()
