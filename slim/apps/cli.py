"""The console scripts installed with the package (pyproject.toml, [project.scripts]). Each runs one command
of slim/apps/ as its `tools/*.py` (or `slim/distill/distill_train.py`) script does:

    slim-distill        distill_train.py   distil a teacher into a student (also --pipeline, --slim_config)
    slim-train          tools/train.py     train one model alone (or PaddleDetection's --slim_config)
    slim-eval           tools/eval.py      evaluate weights on a config's validation set
    slim-predict        tools/predict.py   segmentation masks for image files
    slim-infer          tools/infer.py     detections drawn on image files
    slim-export         tools/export.py    a deployable static model
    slim-list-layers    tools/list_layers.py   layer names and shapes; --suggest pairs for a teacher
    slim-prune-layers   tools/prune_layers.py  cut blocks out of a checkpoint
    slim-prepare-data   tools/prepare_data.py  datasets from installed packages' sample data
    slim-demo           tools/demo.py      each task's demo, end to end
"""
import importlib


def _cli(module):
    return importlib.import_module(f"slim.apps.{module}").cli()


def distill():
    return _cli("distill")


def train():
    return _cli("train")


def evaluate():
    return _cli("evaluate")


def predict():
    return _cli("predict")


def infer():
    return _cli("infer")


def export():
    return _cli("export")


def list_layers():
    return _cli("list_layers")


def prune_layers():
    return _cli("prune_layers")


def prepare_data():
    return _cli("prepare_data")


def demo():
    return _cli("demo")
