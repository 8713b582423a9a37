"""PaddleSeg's ACT command (auto-compression: QAT distilled from the fp32 model) on this package's trainer.

The command lives in slim/apps/act.py (its usage: `python tools/act.py --help`); installed, it is also
`slim-act`.

    python tools/act.py --act_config_path configs/seg/act/deeplabv3p_resnet18_vd_nuclei_qat.yaml \
        --config_path configs/seg/deeplabv3p_resnet18_vd_nuclei_student.yml \
        --model_path output/student/best_model/model.pdparams --save_dir output/act
"""
import os
import sys

try:  # installed (make install, pip install -e .): nothing to add
    import slim  # noqa: F401
except ImportError:  # run from a checkout that was not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from slim.apps.act import cli, main  # noqa: E402,F401  (`slim-act` when installed)

if __name__ == "__main__":
    cli()
