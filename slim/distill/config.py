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
    "test_config", "to_static_training", "task", "seed", "device", "reference_batch_size", "ema", "teachers",
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


def _read_yaml(path, named_by=None):
    if not os.path.exists(path):
        if named_by:
            raise ConfigError(f"Config {named_by} inherits (`{BASE_KEY}`) from {path}, which does not exist. Fix the "
                              f"`{BASE_KEY}` path in {named_by} (it is relative to that file's folder).")
        raise ConfigError(f"Config file not found: {path}. Check the path given with -c/--config (relative paths "
                          f"start from the current folder, {os.getcwd()}).")
    if not os.path.isfile(path):
        raise ConfigError(f"Config {path} is a folder, not a yaml file. Give the path of a .yml file.")
    with open(path, "r", encoding="utf-8") as f:
        try:
            data = yaml.load(f, Loader=_TaggedLoader)
        except yaml.YAMLError as e:
            raise ConfigError(f"Config file {path} is not valid yaml{_yaml_where(e)}: {_yaml_problem(e)}. Fix the "
                              f"yaml syntax there (indentation, `key: value` pairs, closed brackets and "
                              f"quotes).") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"Config file {path} is not a text (utf-8) file ({e.reason} at byte {e.start}); "
                              f"give the path of a yaml config.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of `key: value` lines at its top level (e.g. "
                          f"`batch_size: 4`), but it holds a {_kind(data)}.")
    return data


def _yaml_where(error):
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def _yaml_problem(error):
    context, mark = getattr(error, "context", None), getattr(error, "context_mark", None)
    if context and mark is not None and mark is not getattr(error, "problem_mark", None):
        context += f" (started at line {mark.line + 1}, column {mark.column + 1})"
    text = ", ".join(p for p in (context, getattr(error, "problem", None)) if p)
    return text or str(error).splitlines()[0]


def _kind(value):
    if isinstance(value, bool):
        return "true/false value"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "text value"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__


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


def parse_yaml_with_bases(path, _seen=None, _named_by=None):
    """Read a yaml file and everything it inherits through `_base_` (paths relative to the file)."""
    path = os.path.abspath(path)
    chain = list(_seen or ())
    if path in chain:
        loop = " -> ".join(os.path.basename(p) for p in chain[chain.index(path):] + [path])
        raise ConfigError(f"Config {chain[0]} inherits from itself through `{BASE_KEY}`: {loop} "
                          f"({os.path.dirname(path)}). Remove the `{BASE_KEY}` entry that closes the loop.")
    chain.append(path)
    data = _read_yaml(path, _named_by)
    bases = data.pop(BASE_KEY, [])
    for alias in BASE_KEY_ALIASES:
        if alias in data:
            if bases:
                raise ConfigError(f"Config {path} has both `{BASE_KEY}` and `{alias}`; keep one.")
            bases = data.pop(alias)
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"Config {path}: `{BASE_KEY}` must be a file path or a list of paths, got {bases!r}.")
    merged = {}
    for base in bases:
        base_path = os.path.join(os.path.dirname(path), base)
        merged = merge_dicts(parse_yaml_with_bases(base_path, chain, path), merged)
    return merge_dicts(data, merged)


def parse_override_value(text):
    """`-o` values are yaml scalars or flow collections: 3, 0.1, true, null, [1, 2], {a: 1}, name."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data, opts):
    """Apply `key.sub=value` strings (list indices allowed: `loss.types.0.type=DiceLoss`).

    A missing top-level section is created (unknown top-level keys are reported by the key check); below
    the top level, every section on the path but the last key must exist, so that a misspelt section
    (`model.backbon.type=X`) is an error rather than a new, ignored one."""
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
            node = _child(node, part, create=depth == 0, item=item, path=".".join(parts[:depth + 1]))
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
        raise ConfigError(f"Override {item!r}: {path.rsplit('.', 1)[0]!r} is a value, not a section, so it has no "
                          f"key {part!r}. Set the value itself (-o {path.rsplit('.', 1)[0]}=...).")
    if part not in node or node[part] is None:
        if not create and part not in node:
            parent = path.rsplit(".", 1)[0]
            close = difflib.get_close_matches(part, [str(k) for k in node], n=1, cutoff=0.6)
            hint = f" Did you mean {parent}.{close[0]}?" if close else ""
            raise ConfigError(
                f"Override -o {item}: the config has no section {path!r} ({parent!r} holds: "
                f"{', '.join(map(str, node)) or 'nothing'}).{hint} -o adds new keys only inside a section that "
                f"exists; to add a whole new section, give it as one value: -o {path}={{key: value}}.")
        node[part] = {}
    return node[part]


def check_top_level_keys(data, known, path=None, from_opts=()):
    """Unknown top-level keys are an error naming the nearest known key; those in `from_opts` are said to
    come from -o, the others from the config file `path`."""
    unknown = [k for k in data if k not in known]
    if not unknown:
        return
    in_file = [k for k in unknown if k not in from_opts]
    where = f" in {path}" if path and in_file else (" set with -o" if not in_file else "")
    lines = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else "not a key this tool knows"
        source = " (set with -o)" if key in from_opts and in_file else ""
        lines.append(f"  {key!r}{source}: {hint}")
    raise ConfigError(
        f"Unknown top-level key(s){where}:\n" + "\n".join(lines)
        + f"\nKnown keys: {', '.join(sorted(known))}.")


def _positive_int(v):
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _non_negative_int(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _non_negative_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0


# Value types of the keys the engine itself reads: key path -> (check, what is expected, an example).
_VALUE_CHECKS = {
    ("iters",): (_positive_int, "a positive integer", "iters: 1000"),
    ("epochs",): (_positive_int, "a positive integer", "epochs: 30"),
    ("batch_size",): (_positive_int, "a positive integer", "batch_size: 4"),
    ("reference_batch_size",): (_positive_int, "a positive integer", "reference_batch_size: 8"),
    ("seed",): (_non_negative_int, "a non-negative integer", "seed: 0"),
    ("learning_rate",): (_non_negative_number, "a non-negative number", "learning_rate: 0.01"),
    ("lr_scheduler", "learning_rate"): (_non_negative_number, "a non-negative number",
                                        "lr_scheduler: {learning_rate: 0.01}"),
}
def _looks_numeric(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


_SECTIONS = ("model", "optimizer", "lr_scheduler", "loss", "train_dataset", "val_dataset", "test_dataset")


def check_values(data, path=None, opts=()):
    """The engine's own keys have values of the right type (null leaves a key unset)."""
    overridden = [o.split("=", 1)[0].strip() for o in opts or () if "=" in o]

    def source(key):
        for name in overridden:
            if key == name or key.startswith(name + "."):
                return f"(set with -o {name}=...)"
        return f"in {path} (or a file it inherits)" if path else "in the config"

    for key in _SECTIONS:
        value = data.get(key)
        if value is not None and not isinstance(value, dict):
            raise ConfigError(f"`{key}` {source(key)} must be a section of `name: value` entries, got a "
                              f"{_kind(value)}: {value!r}. Write it as e.g. `{key}: {{type: ...}}`.")
    for keys, (ok, expected, example) in _VALUE_CHECKS.items():
        node = data
        for part in keys:
            node = node.get(part) if isinstance(node, dict) else None
        if node is None or ok(node):
            continue
        name = ".".join(keys)
        hint = ""
        if isinstance(node, str) and _looks_numeric(node):
            hint = " (yaml reads a number like 1e-3 as text: write it with a dot, 1.0e-3, and without quotes)"
        raise ConfigError(f"`{name}` {source(name)} must be {expected}, got {node!r} (a {_kind(node)}){hint}. "
                          f"Set e.g. `{example}`, or leave it out.")


def _drop_inherit_keys(value):
    if isinstance(value, dict):
        return {k: _drop_inherit_keys(v) for k, v in value.items() if k != INHERIT_KEY}
    if isinstance(value, list):
        return [_drop_inherit_keys(v) for v in value]
    return value


def load_config(path, opts=None, defaults=None, known_keys=None, check_keys=True):
    """Load a yaml config, apply `_base_` and overrides, validate top-level keys and the engine's values,
    freeze it.

    `check_keys=False` skips the validation (to peek at a config before its task is known)."""
    data = merge_dicts(parse_yaml_with_bases(path), copy.deepcopy(defaults or {}))
    data = _drop_inherit_keys(data)
    before = set(data)
    data = apply_overrides(data, opts)
    if check_keys:
        known = known_config_keys() if known_keys is None else set(known_keys)
        check_top_level_keys(data, known, path, from_opts={k for k in data if k not in before})
        check_values(data, path, opts)
    return Config(data, path=os.path.abspath(path))
