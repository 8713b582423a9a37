"""Run a trained model on images and write visualisations.

    python tools/predict.py --config configs/seg/deeplabv3p_resnet18_vd_nuclei_student.yml \
        --model_path output/seg/distill/best_model/model.pdparams --image_path data/nuclei/images \
        --save_dir output/seg/predict

Segmentation writes pseudo-colour masks (SAVE_DIR/pseudo_color_prediction) and overlays on the image
(SAVE_DIR/added_prediction). `--image_path` is an image file or a folder of images.
"""
import os
import sys


import paddle

from slim.distill.errors import ConfigError
from slim.apps import launch, tools

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def image_files(path):
    if os.path.isfile(path):
        return [path]
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS))
        if files:
            return files
        raise ConfigError(f"{path} holds no image ({', '.join(IMAGE_EXTENSIONS)}).")
    raise ConfigError(f"--image_path {path} does not exist.")


def main(argv=None):
    p = launch.make_parser(__doc__)
    tools.add_model_flags(p)
    p.add_argument("--image_path", required=True, help="an image file or a folder of images")
    p.add_argument("--save_dir", default="output/predict")
    args = p.parse_args(argv)
    paths = image_files(args.image_path)
    task, cfg, model = tools.load_model_for_inference(args)
    with paddle.no_grad():
        outs = task.predict_files(model, cfg, paths, args.save_dir, log=print)
    print(f"{len(paths)} image(s); results in {', '.join(outs)}")
    return 0


def cli():
    """The `slim-predict` command."""
    sys.exit(launch.run_main(main))


if __name__ == "__main__":
    cli()
