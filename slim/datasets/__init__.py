"""Dataset preparers: turn the sample data of installed pip packages into the folder layouts that
PaddleSeg (nuclei; optic_disc_layout: OpticDiscSeg's), PaddleDetection VOC (trees, nuclei_boxes) and
PaddleClas (mnist) read. No network is needed.

Each `prepare(out, ...)` builds in a temporary sibling folder, renames it to `out` at the end and
writes a `prepared.json` marker; see `tools/prepare_data.py` for the command line.
"""
from . import mnist, nuclei, trees

PREPARERS = {"nuclei": nuclei.prepare, "nuclei_boxes": nuclei.prepare_boxes,
             "optic_disc_layout": nuclei.prepare_optic_disc, "trees": trees.prepare, "mnist": mnist.prepare}

__all__ = ["PREPARERS", "mnist", "nuclei", "trees"]
