"""Train one model alone with the shared trainer (the tutorial's teacher and student-baseline steps).

    python tools/train.py --config configs/seg/deeplabv3p_resnet18_vd_nuclei_teacher.yml \
        --do_eval --save_interval 100 --seed 0 --save_dir output/teacher

With PaddleDetection's `--slim_config distill.yml` it distils instead: the slim config gives the teacher's
config (its `_BASE_`), the teacher's weights (`pretrain_weights`) and the method (`slim_method`,
`distill_loss`); the student's data, readers, optimizer and schedule come from -c.
"""
import os
import sys

try:  # installed (make install, pip install -e .): nothing to add
    import slim  # noqa: F401
except ImportError:  # run from a checkout that was not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from slim.apps.train import cli, main  # noqa: E402,F401  (`slim-train` when installed)

if __name__ == "__main__":
    cli()
