"""Evaluate a model (teacher or student) on the validation set of its config.

    python tools/eval.py --config configs/seg/deeplabv3p_resnet18_vd_nuclei_student.yml \
        --model_path output/seg/distill/best_model/model.pdparams
    python tools/eval.py -c configs/det/yolov3_mobilenet_v1_trees_student.yml -o weights=output/det/best_model

Segmentation prints PaddleSeg's line `[EVAL] #Images: N mIoU: x Acc: x Kappa: x Dice: x` and per-class
IoU; classification prints top-1, top-5 and feature-matching recall@1 and saves the validation
embeddings as .npy (in --save_dir). `--save_json F` also writes the metrics to a file.
"""
import sys

from slim.apps import launch, tools


def main(argv=None):
    # PaddleClas configs (Arch: + Global:) run with PaddleClas's command line: slim/apps/ppcls.py
    from slim.apps import ppcls as ppcls_cli
    if ppcls_cli.wants(argv):
        return ppcls_cli.eval_main(argv)
    p = launch.make_parser(__doc__)
    tools.add_model_flags(p)
    p.add_argument("--save_json", default=None, help="also write the metrics to this json file")
    p.add_argument("--save_dir", default=None, help="where a task writes outputs beyond the metrics (classification: "
                   "the embeddings as .npy); default: the folder of --save_json, else the folder of the weights")
    args = p.parse_args(argv)
    task, cfg, model = tools.load_model_for_inference(args)
    tools.evaluate_on_val(task, cfg, model, args.save_json)
    task.save_eval_outputs(args.save_dir or tools.default_output_dir(args, task, cfg), log=print)
    return 0


def cli():
    """The `slim-eval` command."""
    sys.exit(launch.run_main(main))


if __name__ == "__main__":
    cli()
