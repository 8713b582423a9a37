"""Distil a teacher into a student: the PaddleSeg tutorial's command, for every task.

    python slim/distill/distill_train.py --teacher_config T.yml --student_config S.yml \
        --do_eval --use_vdl --save_interval 250 --seed 0 --save_dir output/distill
    python -m paddle.distributed.launch --nproc_per_node 2 slim/distill/distill_train.py ...

    python slim/distill/distill_train.py --pipeline configs/depth/multistage_flow.yml   # stages

    python slim/distill/distill_train.py -c student.yml --slim_config distill.yml       # PaddleDetection's form

The task (segmentation, detection, classification) is read from the student config. The teacher's
weights come from its `model.pretrained` (or --teacher_pretrained). Distillation terms come from the
student config's `distill_loss` (on logits) and `distill:` pairs, and from the adaptors and
`prepare_distill_config()` in slim/distill/distill_config.py; when there are none, the task may choose a
default (detection: L2 on the three YOLOv3 head outputs). With `--slim_config` (a task's own distillation
config, PaddleDetection's), the teacher's config, its weights and the method come from that file instead.
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
