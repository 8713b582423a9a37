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


from slim.distill.errors import ConfigError
from slim.apps import launch, tools

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def image_paths(infer_img, infer_dir):
    if infer_img:
        if not os.path.isfile(infer_img):
            raise ConfigError(f"--infer_img {infer_img} not found.")
        return [infer_img]
    if not infer_dir or not os.path.isdir(infer_dir):
        raise ConfigError(f"--infer_dir {infer_dir!r} is not a folder (give --infer_img or --infer_dir).")
    paths = sorted(os.path.join(infer_dir, n) for n in os.listdir(infer_dir) if n.lower().endswith(IMAGE_EXTS))
    if not paths:
        raise ConfigError(f"--infer_dir {infer_dir} holds no image ({', '.join(IMAGE_EXTS)}).")
    return paths


def main(argv=None):
    p = launch.make_parser(__doc__)
    tools.add_model_flags(p)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--infer_img", default=None, help="one image")
    group.add_argument("--infer_dir", default=None, help="a folder of images")
    p.add_argument("--output_dir", default="output/infer")
    p.add_argument("--draw_threshold", type=float, default=0.5, help="draw boxes scoring at least this")
    args = p.parse_args(argv)
    paths = image_paths(args.infer_img, args.infer_dir)
    task, cfg, model = tools.load_model_for_inference(args)
    if task.name != "det":
        raise ConfigError(f"tools/infer.py draws detections; {args.config} is a {task.name} config "
                          f"(use tools/predict.py).")
    task.predict_files(model, cfg, paths, args.output_dir, log=print, draw_threshold=args.draw_threshold)
    print(f"wrote {len(paths)} image(s) and bbox.json to {args.output_dir}")
    return 0


def cli():
    """The `slim-infer` command."""
    sys.exit(launch.run_main(main))


if __name__ == "__main__":
    cli()
