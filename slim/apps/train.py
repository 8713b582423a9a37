"""Train one model alone with the shared trainer (the tutorial's teacher and student-baseline steps).

    python tools/train.py --config configs/seg/deeplabv3p_resnet18_vd_nuclei_teacher.yml \
        --do_eval --save_interval 100 --seed 0 --save_dir output/teacher

With PaddleDetection's `--slim_config distill.yml` it distils instead: the slim config gives the teacher's
config (its `_BASE_`), the teacher's weights (`pretrain_weights`) and the method (`slim_method`,
`distill_loss`); the student's data, readers, optimizer and schedule come from -c.

Quantisation-aware training (slim/quant/training.py): `--quant_config Q.yml` (or the config's `quant:`), or
PaddleDetection's `--slim_config yolov3_mobilenet_v1_qat.yml` (`slim: QAT`); `--teacher self` distils the QAT
student from its fp32 self.

    python tools/train.py -c S.yml --slim_config configs/det/slim/yolov3_mobilenet_v1_trees_qat.yml
"""
import sys


from slim.quant import training as quant_training
from . import check, distill, launch


def main(argv=None):
    # PaddleClas configs (Arch: + Global:) run with PaddleClas's command line: slim/apps/ppcls.py
    from slim.apps import ppcls as ppcls_cli
    if ppcls_cli.wants(argv):
        return ppcls_cli.train_main(argv)
    p = launch.make_parser(__doc__)
    p.add_argument("--config", "-c", required=True)
    distill.add_slim_config_flag(p)
    launch.add_common_flags(p)
    check.add_check_flags(p)
    args = p.parse_args(argv)
    launch.setup_process(args)
    opts = launch.flag_overrides(args, args.config)
    task, cfg = launch.load_task_config(args.config, opts)
    notes = []
    cfg = quant_training.prepare_config(args, task, cfg, opts, log=notes.append)
    if args.slim_config or quant_training.self_teacher_wanted(args, cfg):
        return distill.run(args, task, cfg, notes=notes)
    save_dir = args.save_dir or launch.run_folder_name(task, cfg)
    model = launch.build_student(task, cfg, args.init_weights, log=notes.append)
    hooks = check.train_hooks(args, task, cfg)
    launch.train(task, cfg, model, options=launch.options_from_args(args, save_dir), notes=notes, hooks=hooks)


def cli():
    """The `slim-train` command."""
    sys.exit(launch.run_main(main))


if __name__ == "__main__":
    cli()
