"""PaddleSeg's ACT command (deploy/slim/act/run_seg.py) on the dygraph model: QAT distilled from its fp32 self.

    python tools/act.py --act_config_path configs/seg/act/deeplabv3p_resnet18_vd_nuclei_qat.yaml \
        --config_path configs/seg/deeplabv3p_resnet18_vd_nuclei_student.yml \
        --model_path output/student/best_model/model.pdparams --save_dir output/act
    python -m paddle.distributed.launch --nproc_per_node 2 tools/act.py ...        # several processes

The ACT yaml's sections are read as slim/quant/act.py says; the data, model and (unless TrainConfig gives them)
optimizer and schedule come from --config_path; command-line flags (--iters, --learning_rate, -o, ...) win over
both. SAVE_DIR receives the run's checkpoints (resume with --resume_model auto; with TrainConfig.eval_iter the
model is evaluated and best_model/ kept), and at the end the int8 inference model, SAVE_DIR/model.* (what ACT
writes), from the final weights; --no_export skips it. Installed, the command is also `slim-act`.
"""
import os
import sys
from collections import OrderedDict

from slim.distill.config import apply_overrides
from slim.distill.errors import ConfigError
from slim.distill.pairs import parse_pairs
from slim.quant import act, training as quant_training
from . import launch


def no_task_loss(student_out, batch):
    """ACT trains on the distillation terms alone (its reader feeds images, no labels)."""
    return OrderedDict()


def parse_args(argv=None):
    p = launch.make_parser(__doc__)
    p.add_argument("--act_config_path", required=True, metavar="A.yaml", help="the ACT yaml (Distillation, QuantAware, "
                   "TrainConfig, Global), as PaddleSeg's deploy/slim/act/configs write it")
    p.add_argument("--config_path", "--config", "-c", dest="config_path", required=True, metavar="SEG.yml",
                   help="the model's training config (its model, data, optimizer and schedule)")
    p.add_argument("--model_path", required=True, help="the fp32 model's dygraph weights (.pdparams or a checkpoint "
                   "folder): the starting point and the teacher")
    p.add_argument("--devices", choices=("gpu", "cpu"), default=None, help="run_seg.py's spelling of --device")
    p.add_argument("--no_export", action="store_true", help="do not write SAVE_DIR/model.* at the end")
    launch.add_common_flags(p)
    return p.parse_args(argv)


def _explicit(argv, flag):
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.quant_config or args.teacher:
        raise ConfigError("tools/act.py takes its quant settings from the ACT yaml's QuantAware section and distils from "
                          "the fp32 model itself: drop --quant_config / --teacher.")
    args.device = args.device or args.devices
    launch.setup_process(args)
    plan = act.read_act_config(args.act_config_path)
    notes = list(plan.notes)
    opts = launch.flag_overrides(args, args.config_path)
    task, cfg = launch.load_task_config(args.config_path, opts)  # the -o keys checked here
    cfg.update(plan.train)  # TrainConfig over the model's config, the command line over both
    if plan.train.get("lr_scheduler"):
        cfg.pop("learning_rate", None)
    cfg = apply_overrides(cfg, opts)
    cfg["quant"] = plan.quant

    student = launch.build_student(task, quant_training.without_quant(cfg), args.model_path, log=notes.append)
    pairs, pair_notes = act.resolve_pairs(plan, student, task.logits_ref(cfg))
    notes += pair_notes
    teacher = quant_training.self_teacher(task, cfg, student, log=notes.append)
    quant_training.quantize_student(task, student, cfg, log=notes.append)
    notes.append("ACT: the loss is the distillation terms alone (alpha x loss per node), as ACT trains on images "
                 "without labels")

    save_dir = args.save_dir or os.path.join("output", "act", task.run_name(cfg))
    if plan.eval_iter and not _explicit(argv, "--save_interval"):
        args.save_interval = plan.eval_iter
    if plan.log_iters and not _explicit(argv, "--log_iters"):
        args.log_iters = plan.log_iters
    options = launch.options_from_args(args, save_dir)
    if plan.eval_iter:  # ACT evaluates every eval_iter iterations
        options.do_eval = True
        options.eval_interval = args.eval_interval or plan.eval_iter
    trainer = launch.train(task, cfg, student, teacher, parse_pairs(pairs), (None, None), options, notes,
                           task_loss=no_task_loss)
    if not args.no_export:
        export_int8(task, cfg, student, save_dir, trainer.log)
    return 0


def export_int8(task, cfg, student, save_dir, log=print):
    """SAVE_DIR/model.* : the int8 inference model of the trained QAT student (the first process writes it)."""
    from slim.distill.adaptor import unwrap
    from slim.engine import env
    from slim.quant import save_quantized_inference_model
    if not env.is_main_process():
        return None
    model = unwrap(student)
    model.eval()
    prefix = os.path.join(save_dir, "model")
    save_quantized_inference_model(task.export_model(model, cfg), prefix, task.export_input_spec(cfg),
                                   quant_training.settings_of(cfg))
    log(f"ACT: the int8 inference model of the final weights is {prefix}.* (quantize/dequantize ops with the "
        f"trained scales)")
    return prefix


def cli():
    """The `slim-act` command."""
    sys.exit(launch.run_main(main))


if __name__ == "__main__":
    cli()
