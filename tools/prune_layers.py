"""Cut blocks out of a checkpoint: drop their weights and renumber the remaining blocks.

    python tools/prune_layers.py --config configs/depth/segformer_mscan_d14_nuclei.yml \
        --model_path output/depth/teacher/iter_600 \
        --remove_layers backbone.block1:1 backbone.block2:1 backbone.block3:1,3,5,7 backbone.block4:1 \
        --save_path output/depth/cut/model.pdparams --verify_config configs/depth/segformer_mscan_d7_nuclei.yml

    --block_list backbone.block3 --remove_layers 1 3 5 7       # one block list

The saved state dict loads strictly into the same model built with fewer blocks (`--verify_config`
checks it, and that its outputs equal the un-cut model's with the removed blocks as identities). Blocks
that are identities already (the end of a pipeline stage with `remove_layers`, slim/apps/pipeline.py)
are cut without changing the outputs; cutting blocks of a plain trained model ("cut at once") changes
them, and the cut model is then fine-tuned.
"""
import os
import sys

try:  # installed (make install, pip install -e .): nothing to add
    import slim  # noqa: F401
except ImportError:  # run from a checkout that was not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from slim.apps.prune_layers import cli, main  # noqa: E402,F401  (`slim-prune-layers` when installed)

if __name__ == "__main__":
    cli()
