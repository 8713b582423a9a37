"""Depth distillation for any model whose blocks sit in a LayerList or Sequential (MixFormerV2-style).

- blocks.py   find block lists by name, validate removals, cut removed blocks out of a state dict
- removal.py  progressive removal (blocks fade into identities on a cosine schedule), layer pairs
- freeze.py   train only named parts (`freeze:` / `trainable:` patterns)

Pipelines of stages that use them: slim/apps/pipeline.py (`distill_train.py --pipeline P.yml`).
"""
from .blocks import (block_counts, block_lists, check_removal, compare_outputs, cut_state_dict, find_block_list, kept_indices,
                     parse_removal, renumber_index)
from .freeze import FrozenLayersEvalHook, apply_freeze, frozen_sublayers
from .removal import ProgressiveRemoval, RemovalScheduleHook, blend_factor, layer_pairs

__all__ = [
    "block_counts", "block_lists", "check_removal", "compare_outputs", "cut_state_dict", "find_block_list", "kept_indices",
    "parse_removal", "renumber_index", "FrozenLayersEvalHook", "apply_freeze", "frozen_sublayers",
    "ProgressiveRemoval", "RemovalScheduleHook", "blend_factor", "layer_pairs",
]
