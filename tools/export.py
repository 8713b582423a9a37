"""Export a trained model for inference (`paddle.jit.save`) and check it against the dygraph model.

    python tools/export.py --config configs/seg/deeplabv3p_resnet18_vd_nuclei_student.yml \
        --model_path output/seg/distill/best_model/model.pdparams --save_dir output/seg/export

Writes SAVE_DIR/model (Paddle's inference files) and deploy.yaml, then loads the saved model, runs it
and the dygraph model on the same input and prints the largest difference (it fails above --atol).
"""
import os
import sys

try:  # installed (make install, pip install -e .): nothing to add
    import slim  # noqa: F401
except ImportError:  # run from a checkout that was not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from slim.apps.export import cli, main  # noqa: E402,F401  (`slim-export` when installed)

if __name__ == "__main__":
    cli()
