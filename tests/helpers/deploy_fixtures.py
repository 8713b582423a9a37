"""A small MNIST classifier trained once per test session (fp32, then QAT from it) for the deployment tests: the
int8 export, evaluation through Paddle Inference and PTQ (tests/test_deploy_int8.py, tests/test_ptq.py)."""
import os

from slim.datasets import mnist
from tests.helpers.cli import ROOT, run_tool

CONFIG = os.path.join(ROOT, "configs", "cls", "convnet_student_mnist.yml")
QUANT_YML = "quant:\n  weight_quantize_type: channel_wise_abs_max\n  activation_quantize_type: moving_average_abs_max\n"
FP32_ITERS, QAT_ITERS = 300, 100


def data_opts(data):
    return [f"{split}_dataset.{key}={data}{suffix}" for split in ("train", "val")
            for key, suffix in (("dataset_root", ""), ("file_list", f"/{split}_list.txt"))]


def trained_classifier(base):
    """{config, opts, quant_config, fp32 (weights), qat (weights)} under base/deploy_cls: the demo's ConvNet
    student on MNIST (100 images per class and split), FP32_ITERS iterations, then QAT_ITERS of QAT from them
    (learning rate 5e-4). Trained on the first call of a session, read back afterwards."""
    root = os.path.join(str(base), "deploy_cls")
    paths = {"config": CONFIG, "root": root, "quant_config": os.path.join(root, "quant.yml"),
             "fp32": os.path.join(root, "fp32", f"iter_{FP32_ITERS}", "model.pdparams"),
             "qat": os.path.join(root, "qat", f"iter_{QAT_ITERS}", "model.pdparams")}
    data = os.path.join(root, "data")
    paths["opts"] = data_opts(data)
    if os.path.isfile(paths["qat"]):
        return paths
    os.makedirs(root, exist_ok=True)
    mnist.prepare(data, per_class=100)
    with open(paths["quant_config"], "w") as f:
        f.write(QUANT_YML)
    common = ["--seed", 0, "--log_iters", 100, "--save_interval", 100000]
    assert run_tool("train", "-c", CONFIG, "--iters", FP32_ITERS, "--save_dir", os.path.join(root, "fp32"), *common,
                    "-o", *paths["opts"]) == 0
    assert run_tool("train", "-c", CONFIG, "--iters", QAT_ITERS, "--save_dir", os.path.join(root, "qat"), *common,
                    "--quant_config", paths["quant_config"], "--init_weights", paths["fp32"],
                    "-o", *paths["opts"], "lr_scheduler.learning_rate=0.0005") == 0
    return paths
