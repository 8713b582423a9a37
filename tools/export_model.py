"""PaddleClas's name of the export command: the same as tools/export.py.

    python tools/export_model.py -c X.yaml -o Global.pretrained_model=P -o Global.save_inference_dir=D
"""
import os
import sys

try:  # installed (make install, pip install -e .): nothing to add
    import slim  # noqa: F401
except ImportError:  # run from a checkout that was not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from slim.apps.export import cli, main  # noqa: E402,F401

if __name__ == "__main__":
    cli()
