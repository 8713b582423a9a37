"""Evaluate a model (teacher or student) on the validation set of its config.

    python tools/eval.py --config configs/seg/deeplabv3p_resnet18_vd_nuclei_student.yml \
        --model_path output/seg/distill/best_model/model.pdparams
    python tools/eval.py -c configs/det/yolov3_mobilenet_v1_trees_student.yml -o weights=output/det/best_model

Segmentation prints PaddleSeg's line `[EVAL] #Images: N mIoU: x Acc: x Kappa: x Dice: x` and per-class
IoU; classification prints top-1, top-5 and feature-matching recall@1 and saves the validation
embeddings as .npy (in --save_dir). `--save_json F` also writes the metrics to a file.
"""
import os
import sys

try:  # installed (make install, pip install -e .): nothing to add
    import slim  # noqa: F401
except ImportError:  # run from a checkout that was not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from slim.apps.evaluate import cli, main  # noqa: E402,F401  (`slim-eval` when installed)

if __name__ == "__main__":
    cli()
