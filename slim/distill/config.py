"""Yaml configs with `_base_` inheritance and `-o key.sub=value` overrides, frozen after loading.

Priority, highest first: command-line overrides, the yaml file, the yaml files it inherits from
(`_base_`, PaddleSeg style; a dict holding `_inherited_: false` replaces its base instead of merging),
then the defaults the caller passes. Unknown top-level keys are an error that names the nearest known key.

    _base_: ../_base_/nuclei.yml
    batch_size: 4
    model:
      type: DeepLabV3P
      backbone: {type: ResNet18_vd, output_stride: 16}

    load_config('S.yml', opts=['model.backbone.output_stride=8', 'batch_size=2'])
"""
import copy
import difflib
import os
from collections.abc import Mapping

import yaml

from .errors import ConfigError

BASE_KEY = "_base_"
BASE_KEY_ALIASES = ("_BASE_",)  # PaddleDetection's spelling
INHERIT_KEY = "_inherited_"


class _TaggedLoader(yaml.SafeLoader):
    """Safe yaml, plus PaddleDetection's class tags: `!VOCDataSet {dataset_dir: d}` is read as
    `{type: VOCDataSet, dataset_dir: d}` (a bare `!LinearWarmup` as `{type: LinearWarmup}`)."""


def _construct_tagged(loader, tag_suffix, node):
    if isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.ScalarNode) and node.value == "":
        value = {}
    else:
        raise ConfigError(f"yaml tag !{tag_suffix} must tag a mapping (e.g. `!{tag_suffix} {{key: value}}`)")
    return {"type": tag_suffix, **value}


_TaggedLoader.add_multi_constructor("!", _construct_tagged)

# Top-level keys understood by the engine and the trainer; task plug-ins add their own with
# `register_config_keys`.
_KNOWN_KEYS = {
    "batch_size", "iters", "epochs", "model", "train_dataset", "val_dataset", "test_dataset",
    "optimizer", "lr_scheduler", "learning_rate", "loss", "distill_loss", "distill", "export",
    "test_config", "to_static_training", "task", "seed", "device", "reference_batch_size", "ema",
}


def register_config_keys(*keys):
    """Let a task plug-in declare the top-level keys its configs may use."""
    _KNOWN_KEYS.update(keys)


def known_config_keys():
    return set(_KNOWN_KEYS)


class Config(Mapping):
    """A read-only, nested view of a config dict; `cfg.model.type` and `cfg['model']['type']` both work.

    `to_dict()` returns a deep, mutable copy for code that builds objects from it.
    """

    def __init__(self, data, path=None):
        object.__setattr__(self, "_data", data)
        object.__setattr__(self, "path", path)

    def __getitem__(self, key):
        return _freeze(self._data[key])

    def __iter__(self):
        return iter(self._data)

    def __len__(self):
        return len(self._data)

    def __getattr__(self, key):
        if key.startswith("__"):
            raise AttributeError(key)
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"config has no key {key!r}") from None

    def __setattr__(self, key, value):
        raise TypeError("the config is frozen after loading; change it with -o key=value instead")

    __setitem__ = __setattr__

    def __repr__(self):
        return f"Config({self._data!r})"

    def to_dict(self):
        return copy.deepcopy(self._data)

    def dump(self):
        return yaml.safe_dump(self._data, sort_keys=False, default_flow_style=None)


class _FrozenList(tuple):
    pass


def _freeze(value):
    if isinstance(value, dict):
        return Config(value)
    if isinstance(value, list):
        return _FrozenList(_freeze(v) for v in value)
    return value


def _read_yaml(path):
    if not os.path.isfile(path):
        raise ConfigError(f"Config file not found: {path}")
    with open(path, "r", encoding="utf-8") as f:
        try:
            data = yaml.load(f, Loader=_TaggedLoader)
        except yaml.YAMLError as e:
            raise ConfigError(f"Config file {path} is not valid yaml: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of keys, got {type(data).__name__}")
    return data


def merge_dicts(top, base):
    """Merge `top` into a copy of `base`; nested dicts merge, everything else in `top` wins."""
    top = dict(top)
    if not top.pop(INHERIT_KEY, True):
        return top
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_dicts(value, merged[key])
        else:
            merged[key] = value
    return merged


def parse_yaml_with_bases(path, _seen=None):
    """Read a yaml file and everything it inherits through `_base_` (paths relative to the file)."""
    path = os.path.abspath(path)
    seen = set(_seen or ())
    if path in seen:
        raise ConfigError(f"Config {path} inherits from itself through `{BASE_KEY}`")
    seen.add(path)
    data = _read_yaml(path)
    bases = data.pop(BASE_KEY, [])
    for alias in BASE_KEY_ALIASES:
        if alias in data:
            if bases:
                raise ConfigError(f"Config {path} has both `{BASE_KEY}` and `{alias}`; keep one.")
            bases = data.pop(alias)
    if isinstance(bases, str):
        bases = [bases]
    merged = {}
    for base in bases:
        base_path = os.path.join(os.path.dirname(path), base)
        merged = merge_dicts(parse_yaml_with_bases(base_path, seen), merged)
    return merge_dicts(data, merged)


def parse_override_value(text):
    """`-o` values are yaml scalars or flow collections: 3, 0.1, true, null, [1, 2], {a: 1}, name."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data, opts):
    """Apply `key.sub=value` strings (list indices allowed: `loss.types.0.type=DiceLoss`)."""
    for item in opts or []:
        if "=" not in item:
            raise ConfigError(
                f"Override {item!r} is not of the form key=value (e.g. -o batch_size=4 "
                f"model.backbone.output_stride=16)")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"Override {item!r} has an empty key part")
        node = data
        for depth, part in enumerate(parts[:-1]):
            node = _child(node, part, create=True, item=item, path=".".join(parts[:depth + 1]))
        last = parts[-1]
        value = parse_override_value(text)
        if isinstance(node, list):
            index = _list_index(node, last, item)
            node[index] = value
        else:
            node[last] = value
    return data


def _list_index(node, part, item):
    try:
        index = int(part)
        node[index]
    except (ValueError, IndexError):
        raise ConfigError(
            f"Override {item!r}: {part!r} is not a valid index into a list of {len(node)} items") from None
    return index


def _child(node, part, create, item, path):
    if isinstance(node, list):
        return node[_list_index(node, part, item)]
    if not isinstance(node, dict):
        raise ConfigError(f"Override {item!r}: {path!r} is a value, not a section")
    if part not in node or node[part] is None:
        if not create:
            raise ConfigError(f"Override {item!r}: no key {path!r}")
        node[part] = {}
    return node[part]


def check_top_level_keys(data, known, path=None):
    unknown = [k for k in data if k not in known]
    if not unknown:
        return
    where = f" in {path}" if path else ""
    lines = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else "not a key this tool knows"
        lines.append(f"  {key!r}: {hint}")
    raise ConfigError(
        f"Unknown top-level key(s){where}:\n" + "\n".join(lines)
        + f"\nKnown keys: {', '.join(sorted(known))}.")


def _drop_inherit_keys(value):
    if isinstance(value, dict):
        return {k: _drop_inherit_keys(v) for k, v in value.items() if k != INHERIT_KEY}
    if isinstance(value, list):
        return [_drop_inherit_keys(v) for v in value]
    return value


def load_config(path, opts=None, defaults=None, known_keys=None, check_keys=True):
    """Load a yaml config, apply `_base_` and overrides, validate top-level keys, freeze it.

    `check_keys=False` skips the validation (to peek at a config before its task is known)."""
    data = merge_dicts(parse_yaml_with_bases(path), copy.deepcopy(defaults or {}))
    data = _drop_inherit_keys(data)
    data = apply_overrides(data, opts)
    if check_keys:
        check_top_level_keys(data, known_config_keys() if known_keys is None else set(known_keys), path)
    return Config(data, path=os.path.abspath(path))
