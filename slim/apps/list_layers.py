"""Print every named sublayer of a config's model with its class, output shape(s) and parameters.

    python tools/list_layers.py --config configs/seg/deeplabv3p_resnet18_vd_nuclei_student.yml \
        --input_shape 1,3,256,256 [--max_depth 2] [-o model.backbone.output_stride=16]

Each printed name can be used in a `distill:` pair or an adaptor's mapping_layers().

With a teacher and --suggest, print a ready `distill:` block instead (the reasoning goes to stderr):

    python tools/list_layers.py -c STUDENT.yml -t TEACHER.yml --suggest > pairs.yml

The block pairs the logits (KLLoss) and, for each output resolution (stride) both models have, the last
layer of that stage, with connectors where channels or sizes differ. Paste it into the student config or
inherit it: `_base_: [STUDENT.yml, pairs.yml]`.
"""
import argparse
import contextlib
import os
import sys


from slim.distill import SlimError, format_layers, list_layers
from slim.apps.launch import load_task_config


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "-c", required=True, help="model config (yaml); the student's with --suggest")
    p.add_argument("--teacher_config", "-t", default=None, help="the teacher's config (yaml), with --suggest")
    p.add_argument("--suggest", action="store_true",
                   help="print a suggested `distill:` block for the student (-c) and teacher (-t) on stdout, "
                        "the reasoning on stderr")
    p.add_argument("--input_shape", default=None, help="N,C,H,W of the example input (default: the task's, "
                   "e.g. 1,3,256,256)")
    p.add_argument("--max_depth", type=int, default=None, help="only names with at most this many parts")
    p.add_argument("-o", "--opts", nargs="*", default=[], help="config overrides key.sub=value (the student's "
                   "with --suggest)")
    return p.parse_args(argv)


def _error(message):
    print(f"error: {message}", file=sys.stderr)
    return 2


@contextlib.contextmanager
def _stdout_to_stderr():
    """Library messages (model building, weight notices) go to stderr, so that stdout holds only the yaml."""
    sys.stdout.flush()
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # a captured stream: no file descriptor to move
        fd = None
    saved = os.dup(fd) if fd is not None else None
    try:
        if saved is not None:
            os.dup2(sys.stderr.fileno(), fd)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        if saved is not None:
            os.dup2(saved, fd)
            os.close(saved)


def suggest(args, shape):
    from slim.apps.suggest import image_shape, render_pairs, suggest_pairs
    with _stdout_to_stderr():
        s_task, s_cfg = load_task_config(args.config, args.opts)
        t_task, t_cfg = load_task_config(args.teacher_config, what="teacher config")
        pairs = suggest_pairs(s_task, s_cfg, t_task, t_cfg, input_shape=shape)
        shape = shape or getattr(pairs, "input_shape", None) or image_shape(s_task.example_inputs(s_cfg, None))
    size = "x".join(map(str, shape)) if shape else "the task's example input"
    header = [f"Distillation pairs suggested by tools/list_layers.py --suggest (input {size})",
              f"student: {args.config}", f"teacher: {args.teacher_config}",
              "Paste into the student config, or inherit: _base_: [STUDENT.yml, pairs.yml] (this list replaces "
              "the student's own distill: list)."]
    sys.stdout.write(render_pairs(pairs, header))
    sys.stdout.flush()
    return 0


def main(argv=None):
    args = parse_args(argv)
    try:
        shape = [int(v) for v in args.input_shape.split(",")] if args.input_shape else None
    except ValueError:
        return _error(f"--input_shape must be comma-separated integers like 1,3,256,256, got {args.input_shape!r}")
    if args.suggest and shape is not None and len(shape) != 4:
        return _error(f"--input_shape must be N,C,H,W (4 integers, e.g. 1,3,256,256) with --suggest, got "
                      f"{args.input_shape!r}")
    if args.suggest and not args.teacher_config:
        return _error("--suggest needs the teacher's config too: -t/--teacher_config TEACHER.yml")
    if args.teacher_config and not args.suggest:
        return _error("-t/--teacher_config is used with --suggest (to list a teacher's layers, pass it as -c)")
    if args.suggest and args.max_depth is not None:
        return _error("--max_depth limits the layer table; it does not apply to --suggest")
    try:
        if args.suggest:
            return suggest(args, shape)
        task, cfg = load_task_config(args.config, args.opts)  # the task's own top-level keys are accepted
        model = task.build_model(cfg)
        rows = list_layers(model, *task.example_inputs(cfg, shape))
    except SlimError as e:
        return _error(e)
    print(format_layers(rows, max_depth=args.max_depth))
    total = sum(p.size for p in model.parameters())
    print(f"\n{len(rows)} sublayers, {int(total):,} parameters")
    return 0


def cli():
    """The `slim-list-layers` command."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
