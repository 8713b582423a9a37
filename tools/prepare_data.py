"""Prepare a dataset from the sample data of an installed pip package (no network needed).

    python tools/prepare_data.py nuclei --out data/nuclei [--train_slices 0-39 --val_slices 45-59]
    python tools/prepare_data.py nuclei_boxes --out data/nuclei_boxes [--train_slices 0-39 --val_slices 45-59]
    python tools/prepare_data.py optic_disc_layout --out data/optic_disc_seg [--train_slices 0-39 --val_slices 45-59]
    python tools/prepare_data.py trees  --out data/trees  [--tile 256 --val_images A,B --keep_classes]
    python tools/prepare_data.py mnist  --out data/mnist  [--seed 0 --val_fraction 0.2 --per_class N]

Re-running with the same options into a finished folder does nothing ("already prepared"). A non-empty
--out that is not this dataset with these options is refused unless --overwrite is given.
Exit codes: 0 done, 2 bad usage or data (the message says what to change).
"""
import os
import sys

try:  # installed (make install, pip install -e .): nothing to add
    import slim  # noqa: F401
except ImportError:  # run from a checkout that was not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from slim.apps.prepare_data import cli, main  # noqa: E402,F401  (`slim-prepare-data` when installed)

if __name__ == "__main__":
    cli()
