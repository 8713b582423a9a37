"""Detect objects in images and draw them: boxes, class names and scores (PaddleDetection's infer.py).

    python tools/infer.py -c configs/det/yolov3_mobilenet_v1_trees_student.yml \
        --infer_img data/trees/JPEGImages/x.jpg --output_dir output/infer --draw_threshold 0.5 \
        -o weights=output/det/distill/best_model/model.pdparams
    python tools/infer.py -c S.yml --infer_dir data/trees/JPEGImages --output_dir output/infer -o weights=P

Each image is written to --output_dir under its own name with the boxes scoring at least
--draw_threshold; every detection (any score) also goes to OUTPUT_DIR/bbox.json. The images go through
the config's TestReader operators (EvalReader when there is none).
"""
import os
import sys

try:  # installed (make install, pip install -e .): nothing to add
    import slim  # noqa: F401
except ImportError:  # run from a checkout that was not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from slim.apps.infer import cli, main  # noqa: E402,F401  (`slim-infer` when installed)

if __name__ == "__main__":
    cli()
