"""Block lists: find them by name, choose blocks to remove, cut them out of a state dict.

A block list is a `paddle.nn.LayerList` or `paddle.nn.Sequential` whose children are the blocks a model
runs one after the other (`backbone.block3` of paddleseg's MSCAN / MixVisionTransformer, `blocks` of a
ViT, `layer2` of a paddle.vision ResNet). Its state-dict keys are `<name>.<index>.<rest>`, so cutting a
block is a matter of dropping its keys and renumbering the ones after it:

    removal = parse_removal({"backbone.block3": [1, 3]})         # or parse_removal([1, 3], "backbone.block3")
    check_removal(model, removal)                                 # names and ranges, before any training
    small_state = cut_state_dict(model.state_dict(), removal, block_counts(model, removal))
    small_model.set_state_dict(small_state)                       # the same model built with 2 fewer blocks

A block that was removed (an identity at the end of progressive removal) returns its input, which is
the output of the last kept block before it: `renumber_index` maps layer-pair indices accordingly.
"""
import re
from collections import OrderedDict

import paddle
import paddle.nn as nn

from slim.distill.adaptor import unwrap
from slim.distill.errors import ConfigError

BLOCK_CONTAINERS = (nn.LayerList, nn.Sequential)


def block_lists(model):
    """OrderedDict name -> container of the model's block lists: LayerLists/Sequentials of blocks
    of one class, not nested inside the blocks of another such list (e.g. `backbone.block3`, not the
    convolutions inside its blocks). `find_block_list` accepts any LayerList/Sequential."""
    found = OrderedDict()
    for name, layer in unwrap(model).named_sublayers():
        if not isinstance(layer, BLOCK_CONTAINERS) or len(layer) < 1:
            continue
        if len({type(child) for child in layer.children()}) != 1:
            continue
        if any(name.startswith(outer + ".") for outer in found):
            continue
        found[name] = layer
    return found


def describe_block_lists(model, limit=12):
    lists = block_lists(model)
    items = [f"{name} ({len(layer)} block{'' if len(layer) == 1 else 's'})" for name, layer in lists.items()]
    more = f", ... (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more if items else "none"


def find_block_list(model, name):
    """The LayerList/Sequential called `name`; a ConfigError naming the valid block lists otherwise."""
    layers = dict(unwrap(model).named_sublayers())
    layer = layers.get(name)
    if layer is None or not isinstance(layer, BLOCK_CONTAINERS):
        what = "is not a LayerList or Sequential" if layer is not None else "does not exist"
        raise ConfigError(f"Block list {name!r} {what} in {type(unwrap(model)).__name__}. Block lists of this "
                          f"model: {describe_block_lists(model)}. (`python tools/list_layers.py --config C.yml` "
                          f"lists every sublayer.)")
    return layer


def parse_removal(remove_layers, block_list=None, where="remove_layers"):
    """`[1, 3]` with a block list name, or `{name: [1, 3], ...}` -> OrderedDict name -> sorted indices."""
    if remove_layers is None:
        return OrderedDict()
    if isinstance(remove_layers, dict):
        if block_list is not None:
            raise ConfigError(f"{where} is a mapping of block lists to indices, so `block_list` "
                              f"({block_list!r}) is not needed; drop one of them.")
        items = remove_layers.items()
    else:
        if not block_list:
            raise ConfigError(f"{where} {list(remove_layers)} needs the name of the block list they index: set "
                              f"`block_list: backbone.block3` (or write {where}: {{backbone.block3: [...]}}).")
        items = [(block_list, remove_layers)]
    removal = OrderedDict()
    for name, indices in items:
        if not isinstance(indices, (list, tuple)):
            indices = [indices]
        clean = []
        for i in indices:
            if isinstance(i, bool) or not isinstance(i, int):
                raise ConfigError(f"{where}: block indices of {name!r} must be integers, got {i!r}")
            clean.append(int(i))
        removal[str(name)] = sorted(set(clean))
    return removal


def check_removal(model, removal, where="remove_layers"):
    """Every block list exists, every index is in range, and at least one block of each list is kept."""
    for name, indices in removal.items():
        count = len(find_block_list(model, name))
        bad = [i for i in indices if not 0 <= i < count]
        if bad:
            raise ConfigError(f"{where}: index {bad[0]} is out of range for block list {name!r}, which has "
                              f"{count} blocks: valid indices are 0..{count - 1}.")
        if len(indices) >= count:
            raise ConfigError(f"{where}: removing all {count} blocks of {name!r} would leave nothing to run; "
                              f"keep at least one (valid indices 0..{count - 1}).")
    return removal


def block_counts(model, names):
    return {name: len(find_block_list(model, name)) for name in names}


def kept_indices(removed, count):
    removed = set(removed)
    return [i for i in range(count) if i not in removed]


def renumber_index(index, removed, count, name="block list"):
    """Index of block `index` after the cut. A removed block is an identity, so its output is the output
    of the last kept block before it; when none is kept before it, there is no block to point to."""
    if not 0 <= index < count:
        raise ConfigError(f"Layer index {index} is out of range for {name}, which has {count} blocks "
                          f"(valid 0..{count - 1}).")
    kept = kept_indices(removed, count)
    earlier = [i for i in kept if i <= index]
    if not earlier:
        raise ConfigError(f"Block {index} of {name} is removed and no kept block comes before it, so its "
                          f"output (the list's input) has no index after the cut; pair another block.")
    return kept.index(earlier[-1])


def _key_pattern(name):
    return re.compile(r"^" + re.escape(name) + r"\.(\d+)(\..+)$")


def cut_state_dict(state, removal, counts=None):
    """A state dict without the removed blocks, the remaining ones renumbered 0..n-1 in order.

    `counts` (name -> number of blocks) is only needed when the last blocks hold no parameters; by default
    it is read from the keys."""
    out = OrderedDict()
    patterns = {name: _key_pattern(name) for name in removal}
    maps = {}
    for name, removed in removal.items():
        count = (counts or {}).get(name)
        if count is None:
            seen = [int(m.group(1)) for m in (patterns[name].match(k) for k in state) if m]
            if not seen:
                raise ConfigError(f"The weights hold no key of block list {name!r} (expected keys like "
                                  f"{name}.0.<...>); check the block list name against the model.")
            count = max(seen) + 1
        bad = [i for i in removed if not 0 <= i < count]
        if bad:
            raise ConfigError(f"Index {bad[0]} is out of range for block list {name!r} with {count} blocks in "
                              f"the weights (valid 0..{count - 1}).")
        if len(removed) >= count:
            raise ConfigError(f"Cutting all {count} blocks of {name!r} is refused: keep at least one.")
        maps[name] = {old: new for new, old in enumerate(kept_indices(removed, count))}
    for key, value in state.items():
        for name, pattern in patterns.items():
            match = pattern.match(key)
            if match:
                new = maps[name].get(int(match.group(1)))
                if new is not None:
                    out[f"{name}.{new}{match.group(2)}"] = value
                break
        else:
            out[key] = value
    return out


def _tensors(value):
    if isinstance(value, paddle.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for k in sorted(value) for t in _tensors(value[k])]
    return []


def compare_outputs(model_a, model_b, inputs):
    """Max absolute difference of two models' outputs (eval mode, no gradients) on the same inputs: checks
    that a cut model computes what the un-cut one did with its removed blocks as identities."""
    outs = []
    for model in (model_a, model_b):
        training = model.training
        model.eval()
        try:
            with paddle.no_grad():
                outs.append(_tensors(model(*inputs)))
        finally:
            if training:
                model.train()
    a, b = outs
    if len(a) != len(b) or any(list(x.shape) != list(y.shape) for x, y in zip(a, b)):
        raise ConfigError(f"The two models return tensors of other shapes ({[list(t.shape) for t in a]} vs "
                          f"{[list(t.shape) for t in b]}): the model's output depends on its number of blocks.")
    return max((float((x - y).abs().max()) for x, y in zip(a, b)), default=0.0)
