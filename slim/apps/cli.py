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
    slim-cache          tools/cache.py     check a teacher-output cache (`verify DIR [--repair]`)
"""
import importlib
from functools import partial


def _cli(module):
    return importlib.import_module(f"slim.apps.{module}").cli()


# each console script calls one of these (pyproject.toml)
distill = partial(_cli, "distill")
train = partial(_cli, "train")
evaluate = partial(_cli, "evaluate")
predict = partial(_cli, "predict")
infer = partial(_cli, "infer")
export = partial(_cli, "export")
list_layers = partial(_cli, "list_layers")
prune_layers = partial(_cli, "prune_layers")
prepare_data = partial(_cli, "prepare_data")
demo = partial(_cli, "demo")
cache = partial(_cli, "cache")
