"""Run a trained model on images and write visualisations.

    python tools/predict.py --config configs/seg/deeplabv3p_resnet18_vd_nuclei_student.yml \
        --model_path output/seg/distill/best_model/model.pdparams --image_path data/nuclei/images \
        --save_dir output/seg/predict

Segmentation writes pseudo-colour masks (SAVE_DIR/pseudo_color_prediction) and overlays on the image
(SAVE_DIR/added_prediction). `--image_path` is an image file or a folder of images.
"""
import os
import sys

try:  # installed (make install, pip install -e .): nothing to add
    import slim  # noqa: F401
except ImportError:  # run from a checkout that was not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from slim.apps.predict import cli, main  # noqa: E402,F401  (`slim-predict` when installed)

if __name__ == "__main__":
    cli()
