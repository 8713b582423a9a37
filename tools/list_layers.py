"""Print every named sublayer of a config's model with its class, output shape(s) and parameters.

    python tools/list_layers.py --config configs/seg/deeplabv3p_resnet18_vd_nuclei_student.yml \
        --input_shape 1,3,256,256 [--max_depth 2] [-o model.backbone.output_stride=16]

Each printed name can be used in a `distill:` pair or an adaptor's mapping_layers().

With a teacher and --suggest, print a ready `distill:` block instead (the reasoning goes to stderr):

    python tools/list_layers.py -c STUDENT.yml -t TEACHER.yml --suggest > pairs.yml

The block pairs the logits (KLLoss) and, for each output resolution (stride) both models have, the last
layer of that stage, with connectors where channels or sizes differ. Paste it into the student config or
inherit it: `_base_: [STUDENT.yml, pairs.yml]`.
"""
import os
import sys

try:  # installed (make install, pip install -e .): nothing to add
    import slim  # noqa: F401
except ImportError:  # run from a checkout that was not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from slim.apps.list_layers import cli, main  # noqa: E402,F401  (`slim-list-layers` when installed)

if __name__ == "__main__":
    cli()
