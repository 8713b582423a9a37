"""Shared pieces of the evaluation, prediction and export tools."""
import os

from slim.distill.errors import ConfigError
from slim.engine import env
from slim.quant import training as quant_training
from .launch import add_integrity_flags, load_task_config


def add_model_flags(parser):
    parser.add_argument("--config", "-c", required=True, help="the model's config (yaml)")
    parser.add_argument("--model_path", default=None,
                        help="weights: a .pdparams file or a checkpoint folder (default: model.pretrained)")
    parser.add_argument("--device", default=None, help="cpu, gpu or gpu:N")
    parser.add_argument("-o", "--opts", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides; `-o weights=PATH` is the PaddleDetection spelling of --model_path")
    quant_training.add_quant_flags(parser, teacher=False)
    add_integrity_flags(parser)
    return parser


def load_model_for_inference(args, log=print):
    """(task, cfg, model in eval mode with its weights)."""
    env.set_device(args.device)
    task, cfg = load_task_config(args.config, [o for o in args.opts if not o.startswith("weights=")])
    path, key = model_path(args, task, cfg)
    if not path:
        raise ConfigError("No weights given: pass --model_path output/.../best_model/model.pdparams "
                          "(or set model.pretrained in the config).")
    cfg = quant_training.apply_quant_config(getattr(args, "quant_config", None), task, cfg, log=log)
    model = task.build_model(cfg)
    with task.logging_to(log):
        local = task.local_weights(path, key)
        # a QAT checkpoint loads into the model quantised with the same settings (--quant_config or `quant:`)
        quant_training.prepare_for_weights(task, model, cfg, local, key, log=log)
        task.load_weights(model, local, "weights" if key == "weights" else f"weights ({key})", key=key)
    args.local_weights = local
    model.eval()
    return task, cfg, model


def model_path(args, task, cfg):
    """(the weights a tool loads, the flag or key that named them): --model_path, else PaddleDetection's
    `-o weights=P`, else the config's."""
    weights = next((o.split("=", 1)[1] for o in args.opts if o.startswith("weights=")), None)
    if args.model_path:
        return args.model_path, "--model_path"
    if weights:
        return weights, "weights"
    return task.pretrained_path(cfg), task.pretrained_key


def default_output_dir(args, task, cfg):
    """Where tools write side outputs when not told: beside --save_json, else beside the weights."""
    from slim.engine.checkpoint import resolve_weights_path
    if getattr(args, "save_json", None):
        return os.path.dirname(os.path.abspath(args.save_json))
    path = getattr(args, "local_weights", None) or model_path(args, task, cfg)[0]
    return os.path.dirname(os.path.abspath(resolve_weights_path(path)))


def evaluate_on_val(task, cfg, model, save_json=None, log=print):
    """The task's metrics of `model` on the config's val dataset; also written to `save_json` when given."""
    import json

    import paddle
    dataset = task.build_dataset(cfg, "val")
    with paddle.no_grad():
        metrics = task.evaluate(model, dataset, cfg, log=log)
    if save_json:
        with open(save_json, "w") as f:
            json.dump(metrics, f, indent=1)
    return metrics
