"""Cut blocks out of a checkpoint: drop their weights and renumber the remaining blocks.

    python tools/prune_layers.py --config configs/depth/segformer_mscan_d14_nuclei.yml \
        --model_path output/depth/teacher/iter_600 \
        --remove_layers backbone.block1:1 backbone.block2:1 backbone.block3:1,3,5,7 backbone.block4:1 \
        --save_path output/depth/cut/model.pdparams --verify_config configs/depth/segformer_mscan_d7_nuclei.yml

    --block_list backbone.block3 --remove_layers 1 3 5 7       # one block list

The saved state dict loads strictly into the same model built with fewer blocks (`--verify_config`
checks it, and that its outputs equal the un-cut model's with the removed blocks as identities). Blocks
that are identities already (the end of a pipeline stage with `remove_layers`, slim/apps/pipeline.py)
are cut without changing the outputs; cutting blocks of a plain trained model ("cut at once") changes
them, and the cut model is then fine-tuned.
"""
import os
import sys


import paddle

from slim.depth import (ProgressiveRemoval, block_counts, compare_outputs, cut_state_dict,
                        parse_removal)
from slim.distill.errors import ConfigError
from slim.apps import launch
from slim.engine import env
from slim.engine.checkpoint import MODEL_FILE, load_model_weights


def parse_remove_args(values, block_list):
    """`1 3` (with --block_list) or `backbone.block3:1,3 backbone.block2:1` -> removal mapping."""
    if any(":" in v for v in values):
        mapping = {}
        for value in values:
            if ":" not in value:
                raise ConfigError(f"--remove_layers mixes NAME:i,j entries with a bare {value!r}; write every "
                                  f"entry as NAME:i,j or give --block_list and bare indices.")
            name, indices = value.rsplit(":", 1)
            try:
                mapping.setdefault(name, []).extend(int(i) for i in indices.split(",") if i.strip())
            except ValueError:
                raise ConfigError(f"--remove_layers {value!r}: indices must be integers (NAME:1,3)") from None
        return parse_removal(mapping, None, "--remove_layers")
    try:
        indices = [int(v) for v in values]
    except ValueError:
        raise ConfigError(f"--remove_layers takes block indices (1 3 5) or NAME:i,j entries, got {values}") from None
    return parse_removal(indices, block_list, "--remove_layers")


def main(argv=None):
    p = launch.make_parser(__doc__)
    p.add_argument("--config", "-c", required=True, help="config of the model the weights belong to")
    p.add_argument("--model_path", required=True, help="weights: a .pdparams file or a checkpoint folder")
    p.add_argument("--remove_layers", nargs="+", required=True, help="indices to cut (or NAME:i,j entries)")
    p.add_argument("--block_list", default=None, help="the LayerList/Sequential the indices refer to")
    p.add_argument("--save_path", required=True, help="output .pdparams file (or folder: FOLDER/model.pdparams)")
    p.add_argument("--verify_config", default=None, help="config of the smaller model: load strictly, compare outputs")
    p.add_argument("--device", default=None)
    p.add_argument("-o", "--opts", nargs="+", default=[], metavar="KEY=VALUE", help="overrides of --config")
    args = p.parse_args(argv)
    env.set_device(args.device)
    removal = parse_remove_args(args.remove_layers, args.block_list)
    task, cfg = launch.load_task_config(args.config, args.opts)
    model = task.build_model(cfg)
    task.load_weights(model, args.model_path)
    removed = ProgressiveRemoval(model, removal, remove_iters=0)  # a = 0: the blocks are identities
    counts = block_counts(model, removal)
    state = cut_state_dict(model.state_dict(), removal, counts)
    save_path = args.save_path
    if os.path.isdir(save_path) or not os.path.splitext(save_path)[1]:
        save_path = os.path.join(save_path, MODEL_FILE)
    os.makedirs(os.path.dirname(os.path.abspath(save_path)), exist_ok=True)
    paddle.save(state, save_path)
    for name, kept in removed.kept().items():
        mapping = ", ".join(f"{old}->{new}" for new, old in enumerate(kept))
        print(f"{name}: {counts[name]} -> {len(kept)} blocks (removed {removal[name]}; kept {mapping})")
    print(f"saved {save_path}")
    if args.verify_config:
        small_task, small_cfg = launch.load_task_config(args.verify_config)
        small = small_task.build_model(small_cfg)
        load_model_weights(small, save_path, "cut weights")
        diff = compare_outputs(model, small, task.example_inputs(cfg))
        print(f"{args.verify_config} loads the cut weights strictly; max |cut - uncut| = {diff:.3g}")
        if diff > 1e-4:
            raise ConfigError(f"The cut model's outputs differ from the un-cut model's by {diff:.3g}: the "
                              f"forward of this model depends on more than its blocks.")
    return 0


def cli():
    """The `slim-prune-layers` command."""
    sys.exit(launch.run_main(main))


if __name__ == "__main__":
    cli()
