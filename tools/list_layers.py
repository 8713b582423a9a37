"""Print every named sublayer of a config's model with its class, output shape(s) and parameters.

    python tools/list_layers.py --config configs/seg/deeplabv3p_resnet18_vd_nuclei_student.yml \
        --input_shape 1,3,256,256 [--max_depth 2] [-o model.backbone.output_stride=16]

Each printed name can be used in a `distill:` pair or an adaptor's mapping_layers().
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from slim.distill import SlimError, format_layers, list_layers  # noqa: E402
from slim.engine.launch import load_task_config  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "-c", required=True, help="model config (yaml)")
    p.add_argument("--input_shape", default=None, help="N,C,H,W of the example input (default 1,3,256,256)")
    p.add_argument("--max_depth", type=int, default=None, help="only names with at most this many parts")
    p.add_argument("-o", "--opts", nargs="*", default=[], help="config overrides key.sub=value")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        shape = [int(v) for v in args.input_shape.split(",")] if args.input_shape else None
    except ValueError:
        print(f"error: --input_shape must be comma-separated integers like 1,3,256,256, got {args.input_shape!r}",
              file=sys.stderr)
        return 2
    try:
        task, cfg = load_task_config(args.config, args.opts)  # the task's own top-level keys are accepted
        model = task.build_model(cfg)
        rows = list_layers(model, *task.example_inputs(cfg, shape))
    except SlimError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_layers(rows, max_depth=args.max_depth))
    total = sum(p.size for p in model.parameters())
    print(f"\n{len(rows)} sublayers, {int(total):,} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
