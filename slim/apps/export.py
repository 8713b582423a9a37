"""Export a trained model for inference (`paddle.jit.save`) and check it against the dygraph model.

    python tools/export.py --config configs/seg/deeplabv3p_resnet18_vd_nuclei_student.yml \
        --model_path output/seg/distill/best_model/model.pdparams --save_dir output/seg/export

Writes SAVE_DIR/model (Paddle's inference files) and deploy.yaml, then loads the saved model, runs it
and the dygraph model on the same input and prints the largest difference (it fails above --atol).
"""
import os
import sys


import numpy as np
import paddle
import yaml

from slim.distill.errors import SlimError
from slim.apps import launch, tools


def first_tensor(out):
    if isinstance(out, (list, tuple)):
        return first_tensor(out[0])
    if isinstance(out, dict):
        return first_tensor(next(iter(out.values())))
    return out


def main(argv=None):
    # PaddleClas configs (Arch: + Global:) run with PaddleClas's command line: slim/apps/ppcls.py
    from slim.apps import ppcls as ppcls_cli
    if ppcls_cli.wants(argv):
        return ppcls_cli.export_main(argv)
    p = launch.make_parser(__doc__)
    tools.add_model_flags(p)
    p.add_argument("--save_dir", default="output/export")
    p.add_argument("--input_shape", default=None, help="N,C,H,W to fix the input shape (default: dynamic)")
    p.add_argument("--check_shape", default="1,3,256,256", help="input used to compare saved and dygraph models")
    p.add_argument("--atol", type=float, default=1e-4)
    args = p.parse_args(argv)
    task, cfg, model = tools.load_model_for_inference(args)
    shape = [int(v) for v in args.input_shape.split(",")] if args.input_shape else None
    layer = task.export_model(model, cfg)
    layer.eval()
    os.makedirs(args.save_dir, exist_ok=True)
    prefix = os.path.join(args.save_dir, "model")
    paddle.jit.save(layer, prefix, input_spec=task.export_input_spec(cfg, shape))
    with open(os.path.join(args.save_dir, "deploy.yaml"), "w") as f:
        yaml.safe_dump({"Deploy": {"model": "model", "task": task.name,
                                   "transforms": (cfg.get("val_dataset") or {}).get("transforms")}}, f,
                       sort_keys=False)
    check = [int(v) for v in (args.input_shape or args.check_shape).split(",")]
    x = paddle.to_tensor(np.random.RandomState(0).randn(*check).astype("float32"))
    with paddle.no_grad():
        expected = first_tensor(layer(x)).numpy()
    loaded = paddle.jit.load(prefix)
    loaded.eval()
    got = first_tensor(loaded(x)).numpy()
    if got.shape != expected.shape:
        raise SlimError(f"the exported model returns shape {list(got.shape)}, the dygraph model {list(expected.shape)}")
    diff = float(np.abs(got - expected).max()) if got.size else 0.0  # e.g. a detector finding nothing
    print(f"exported to {prefix}.*; max |saved - dygraph| on a {check} input = {diff:.3g}")
    if diff > args.atol:
        raise SlimError(f"the exported model differs from the dygraph model by {diff:.3g} (> --atol {args.atol})")
    return 0


def cli():
    """The `slim-export` command."""
    sys.exit(launch.run_main(main))


if __name__ == "__main__":
    cli()
