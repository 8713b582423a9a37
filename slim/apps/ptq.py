"""Post-training quantisation: an int8 inference model from fp32 weights and a few calibration batches of the train
set, no training (the baseline QAT is measured against).

    python tools/ptq.py -c configs/seg/demo/student.yml --model_path output/seg/best_model/model.pdparams \
        --calib_batches 10 --save_dir output/seg/ptq_int8
    python tools/ptq.py -c configs/cls/convnet_student_mnist.yml --model_path W --algo hist --quant_config Q.yml \
        --save_dir output/cls/ptq_int8
    python tools/eval.py -c configs/seg/demo/student.yml --inference_model output/seg/ptq_int8 --precision int8

--calib_batches N batches of --batch_size images (default: the config's batch size) are drawn from the training
set (its own transforms, in an order fixed by --seed); activation scales by --algo (KL, Paddle's default; hist;
abs_max), weights per channel or per tensor as the quant settings say (--quant_config Q.yml or the config's
`quant:`, PaddleSlim's keys; default PaddleSlim's). The model is written as tools/export.py writes a QAT checkpoint
(SAVE_DIR/model.pdmodel + .pdiparams, deploy.yaml), then checked through Paddle Inference (slim/quant/ptq.py says
how the calibration is done).
"""
import os
import sys

import numpy as np

from slim.apps import launch, tools
from slim.distill.errors import ConfigError


def add_ptq_flags(p):
    p.add_argument("--save_dir", default="output/ptq")
    p.add_argument("--calib_batches", type=launch.positive_int, default=10, help="calibration batches (default 10)")
    p.add_argument("--batch_size", type=launch.positive_int, default=None,
                   help="images per calibration batch (default: the config's training batch size)")
    p.add_argument("--algo", choices=("KL", "hist", "abs_max"), default="KL",
                   help="activation scales: KL (default), hist (a percentile of the histogram), abs_max")
    p.add_argument("--seed", type=int, default=0, help="the order calibration samples are drawn in")
    p.add_argument("--input_shape", default=None, help="N,C,H,W to fix the exported input shape (default: dynamic)")
    p.add_argument("--check_shape", default=None, help="input comparing the export with the dygraph model "
                                                       "(default: one calibration image)")
    return p


def load_fp32_model(args, log=print):
    """(task, cfg without its QAT section, fp32 model with its weights, the quant settings to calibrate with)."""
    from slim.engine import env
    from slim.quant import quant_settings
    from slim.quant import training as quant_training
    env.set_device(args.device)
    opts = [o for o in args.opts if not o.startswith("weights=")]
    task, cfg = launch.load_task_config(args.config, opts)
    cfg = quant_training.apply_quant_config(args.quant_config, task, cfg, opts, log=log)
    settings = quant_training.settings_of(cfg) or quant_settings({}, "PaddleSlim's defaults")
    cfg = quant_training.without_quant(cfg)
    path, key = tools.model_path(args, task, cfg)
    if not path:
        raise ConfigError("No weights given: pass --model_path with the fp32 model's weights (.pdparams).")
    if task.name == "ppcls":
        task.mode = "eval"  # the weights given hold every sub-model
    with task.logging_to(log):
        model = task.build_model(cfg)
        local = task.local_weights(path, key)
        keys = quant_training._local_state_keys(task, local, key)
        if keys is not None and quant_training.state_is_quantized(keys):
            raise ConfigError(f"{path} ({key}) holds a QAT model (fake-quant scales): it is already quantised; export "
                              f"it with `tools/export.py --quant_config Q.yml`. PTQ starts from fp32 weights.")
        task.load_weights(model, local, f"weights ({key})", key=key)
    model.eval()
    return task, cfg, model, settings


def calibration_batches(task, cfg, batches, batch_size, seed):
    """`batches` lists of the model's first input (images), drawn from the training set in a seeded order."""
    dataset = task.build_dataset(cfg, "train")
    collate = task.collate_fn("train")
    order = np.random.RandomState(seed).permutation(len(dataset))
    for b in range(batches):
        idx = order[(b * batch_size) % len(order):][:batch_size]
        if len(idx) < batch_size:  # wrap around a small training set
            idx = np.concatenate([idx, order[:batch_size - len(idx)]])
        batch = collate([dataset[int(i)] for i in idx]) if collate else None
        args, _ = task.model_inputs(batch, "train")
        image = args[0]["image"] if isinstance(args[0], dict) else args[0]
        yield image


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    from slim.apps import ppcls as ppcls_cli
    if ppcls_cli.wants(argv):
        from slim.tasks.ppcls.config import merge_opts
        argv = merge_opts(argv)  # PaddleClas repeats -o
    p = launch.make_parser(__doc__)
    tools.add_model_flags(p)
    add_ptq_flags(p)
    args = p.parse_args(argv)
    from slim.apps.export import check_export, check_input, dygraph_output, save_program, write_deploy_yaml
    from slim.quant.ptq import PTQSettings, calibrate
    task, cfg, model, settings = load_fp32_model(args)
    batch_size = args.batch_size or int(task.training_settings(cfg).get("batch_size") or 8)
    layer = task.export_model(model, cfg)
    images = list(calibration_batches(task, cfg, args.calib_batches, batch_size, args.seed))
    calibrate(layer, images, PTQSettings(algo=args.algo), settings)
    shape = [int(v) for v in args.input_shape.split(",")] if args.input_shape else None
    check = [int(v) for v in args.check_shape.split(",")] if args.check_shape else [1] + list(images[0].shape[1:])
    x = check_input(check)
    expected = dygraph_output(layer, x)
    os.makedirs(args.save_dir, exist_ok=True)
    prefix = os.path.join(args.save_dir, "model")
    precision = save_program(layer, prefix, task.export_input_spec(cfg, shape))
    print(f"exported the int8 inference model to {prefix}.pdmodel (+ .pdiparams)")
    check_export(prefix, precision, x, expected, atol=None)
    write_deploy_yaml(args.save_dir, task, cfg, precision)
    return 0


def cli():
    """The `slim-ptq` command."""
    sys.exit(launch.run_main(main))


if __name__ == "__main__":
    cli()
