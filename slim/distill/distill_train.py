"""Distil a teacher into a student: the PaddleSeg tutorial's command, for every task.

    python slim/distill/distill_train.py --teather_config T.yml --student_config S.yml --do_eval --save_dir DIR
    python -m paddle.distributed.launch --nproc_per_node 2 slim/distill/distill_train.py ...

The command lives in slim/apps/distill.py (all flags: `--help`; `--pipeline`, `--slim_config`); installed, it
is also `slim-distill`.
"""
import os
import runpy
import sys

if __name__ == "__main__":
    try:  # installed (make install, pip install -e .): nothing to add
        import slim  # noqa: F401
    except ImportError:  # run from a checkout that was not installed
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    # This file is the tutorial's entry point, not part of the engine: it runs the command's module
    # (slim/apps/distill.py), exactly as `python -m slim.apps.distill` or the `slim-distill` command do.
    runpy.run_module("slim.apps.distill", run_name="__main__", alter_sys=True)
