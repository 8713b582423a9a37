"""Evaluate a model (teacher or student) on the validation set of its config: its weights in dygraph, or an exported
model through Paddle Inference.

    python tools/eval.py --config configs/seg/deeplabv3p_resnet18_vd_nuclei_student.yml \
        --model_path output/seg/distill/best_model/model.pdparams
    python tools/eval.py -c configs/det/yolov3_mobilenet_v1_trees_student.yml -o weights=output/det/best_model
    python tools/eval.py -c configs/cls/convnet_student_mnist.yml --quant_config Q.yml --model_path QAT_WEIGHTS
    python tools/eval.py -c configs/seg/demo/student.yml --inference_model output/export_int8 --precision int8 \
        [--threads 2] [--device gpu [--use_tensorrt]] [--warmup 10 --repeats 50]

Segmentation prints PaddleSeg's line `[EVAL] #Images: N mIoU: x Acc: x Kappa: x Dice: x` and per-class
IoU; classification prints top-1, top-5 and feature-matching recall@1 and saves the validation
embeddings as .npy (in --save_dir). `--save_json F` also writes the metrics to a file.

`--inference_model DIR` (a tools/export.py or tools/ptq.py folder) runs the exported model through Paddle Inference
(slim/quant/inference.py) on the config's val set, with the same metrics, then prints its median latency per
image: batch 1 (the first val batch's first image), --repeats runs after --warmup. On CPU it runs with oneDNN, in
int8 with --precision int8 (an int8 export); on a GPU, int8 needs --use_tensorrt (TensorRT int8 with the model's
own scales). The latency is wall time on a machine other processes may share: compare models side by side.
"""
import sys

from slim.apps import launch, tools

INFERENCE_FLAG = "--inference_model"


def add_inference_flags(p):
    p.add_argument(INFERENCE_FLAG, default=None, metavar="DIR",
                   help="evaluate this exported model (tools/export.py, tools/ptq.py) through Paddle Inference instead "
                        "of weights")
    p.add_argument("--precision", choices=("fp32", "int8"), default=None,
                   help="with --inference_model: int8 (oneDNN int8 on CPU, TensorRT int8 on GPU) needs an int8 "
                        "export; default: the export's own precision")
    p.add_argument("--threads", type=launch.positive_int, default=None,
                   help="with --inference_model, CPU: math library threads (default: OMP_NUM_THREADS, else 1)")
    p.add_argument("--use_tensorrt", action="store_true", help="with --inference_model on a GPU: run with TensorRT")
    p.add_argument("--no_onednn", action="store_true", help="with --inference_model on CPU: plain CPU kernels "
                                                             "(fp32 only)")
    p.add_argument("--warmup", type=launch.non_negative_int, default=10, help="latency: runs before timing")
    p.add_argument("--repeats", type=launch.positive_int, default=50, help="latency: timed runs (median printed)")
    return p


def inference_settings(args, quantized_export):
    import os

    from slim.distill.errors import ConfigError
    from slim.quant.inference import InferenceSettings
    precision = args.precision or ("int8" if quantized_export else "fp32")
    if precision == "int8" and args.no_onednn:
        raise ConfigError("--precision int8 on CPU runs through oneDNN: drop --no_onednn.")
    threads = args.threads or int(os.environ.get("OMP_NUM_THREADS") or 1)
    device = (args.device or "cpu").lower()
    return InferenceSettings(device=device, precision=precision, threads=threads, onednn=not args.no_onednn,
                             use_tensorrt=args.use_tensorrt)


def evaluate_inference_model(args, log=print):
    """Metrics of an exported model on the config's val set through Paddle Inference, and its latency per image;
    returns (metrics, Latency)."""
    import json

    from slim.apps.launch import load_task_config
    from slim.quant.inference import Predictor, batch_of_one, find_model, is_quantized_program
    task, cfg = load_task_config(args.config, args.opts)
    # the export's own precision unless asked: an int8 folder evaluates in int8
    model_file, _ = find_model(args.inference_model)
    settings = inference_settings(args, is_quantized_program(model_file))
    predictor = Predictor(args.inference_model, settings)
    log(f"Paddle Inference: {predictor.describe()}")
    metrics = tools.evaluate_on_val(task, cfg, task.exported_model(predictor.run, cfg), log=log)
    latency = predictor.latency(batch_of_one(predictor.first_inputs), args.warmup, args.repeats)
    shape = "x".join(str(d) for d in predictor.first_inputs[0][:1].shape)
    log(f"latency per image ({shape}, batch 1, {settings.describe()}): {latency.describe()}")
    metrics["latency_ms_median"] = latency.median_ms
    metrics["precision"] = settings.precision
    if args.save_json:
        with open(args.save_json, "w") as f:
            json.dump(metrics, f, indent=1)
    return metrics, latency


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    # PaddleClas configs (Arch: + Global:) run with PaddleClas's command line: slim/apps/ppcls.py, except for an
    # exported model, which every task evaluates here
    from slim.apps import ppcls as ppcls_cli
    if ppcls_cli.wants(argv):
        if not any(a == INFERENCE_FLAG or a.startswith(INFERENCE_FLAG + "=") for a in argv):
            return ppcls_cli.eval_main(argv)
        from slim.tasks.ppcls.config import merge_opts
        argv = merge_opts(argv)  # PaddleClas repeats -o
    p = launch.make_parser(__doc__)
    tools.add_model_flags(p)
    p.add_argument("--save_json", default=None, help="also write the metrics to this json file")
    p.add_argument("--save_dir", default=None, help="where a task writes outputs beyond the metrics (classification: "
                   "the embeddings as .npy); default: the folder of --save_json, else the folder of the weights")
    add_inference_flags(p)
    args = p.parse_args(argv)
    if args.inference_model:
        evaluate_inference_model(args)
        return 0
    task, cfg, model = tools.load_model_for_inference(args)
    tools.evaluate_on_val(task, cfg, model, args.save_json)
    task.save_eval_outputs(args.save_dir or tools.default_output_dir(args, task, cfg), log=print)
    return 0


def cli():
    """The `slim-eval` command."""
    sys.exit(launch.run_main(main))


if __name__ == "__main__":
    cli()
