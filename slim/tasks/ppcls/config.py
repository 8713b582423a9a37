"""PaddleClas configs: detection, loading, `-o` overrides as PaddleClas reads them, and the settings they give.

    -o Global.epochs=1 -o DataLoader.Train.dataset.transform_ops.1.RandCropImage.size=32 \
       -o Arch.models.0.Teacher.pretrained=output/teacher/best_model

`-o` may repeat, and one `-o` may take several KEY=VALUE; a dotted path walks dicts by key and lists by
index; the value is read as yaml (`True`, `null`, `[0.6, 1.0]`, `0.01`); a key that does not exist yet is
added, and the log says so (as PaddleClas prints "A new field ... detected").
"""
import copy
import os

import yaml

from slim.distill.errors import ConfigError

# Slim: PaddleClas's quantisation section (`Slim: {quant: {name: pact}}`), read by slim/quant/qat.py
TOP_KEYS = ("Global", "Arch", "Loss", "Optimizer", "DataLoader", "AMP", "Metric", "Infer", "Slim")
# keys read here; anything else of the config is listed in the log as not used
READ = {
    "Global": {"epochs", "output_dir", "save_interval", "eval_interval", "eval_during_train", "pretrained_model",
               "checkpoints", "use_visualdl", "device", "print_batch_step", "image_shape", "save_inference_dir",
               "class_num", "seed"},
    "AMP": {"use_amp", "level", "scale_loss", "use_dynamic_loss_scaling"},
    "Slim": {"quant"},
    "Optimizer": {"name", "momentum", "lr", "regularizer", "weight_decay", "beta1", "beta2", "epsilon",
                  "multi_precision", "use_nesterov", "no_weight_decay_name", "one_dim_param_no_weight_decay",
                  "clip_norm"},
}


def is_ppcls_config(cfg):
    """A PaddleClas config: it has both `Arch:` and `Global:` sections."""
    return isinstance(cfg, dict) and isinstance(cfg.get("Arch"), dict) and "Global" in cfg


def read_yaml(path):
    if not os.path.isfile(path):
        raise ConfigError(f"Config file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            cfg = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid yaml: {e}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: the top level of a config is a mapping of sections (Global, Arch, ...)")
    return cfg


def merge_opts(argv):
    """argv with every `-o`/`--opts` group collected after one `-o` (PaddleClas repeats -o; argparse would keep
    only the last group)."""
    argv = list(argv)
    rest, opts, i = [], [], 0
    while i < len(argv):
        a = argv[i]
        if a in ("-o", "--opts"):
            i += 1
            while i < len(argv) and not argv[i].startswith("-"):
                opts.append(argv[i])
                i += 1
            continue
        if a.startswith("--opts="):
            opts.append(a.split("=", 1)[1])
        else:
            rest.append(a)
        i += 1
    return rest + (["-o"] + opts if opts else [])


def _parse_value(text):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_override(cfg, opt, log=print):
    if "=" not in opt:
        raise ConfigError(f"-o {opt!r}: overrides are KEY=VALUE, e.g. -o Global.epochs=1")
    path, text = opt.split("=", 1)
    keys = [k for k in path.strip().split(".")]
    if not all(keys):
        raise ConfigError(f"-o {opt!r}: empty key in the dotted path")
    value = _parse_value(text)
    node, walked = cfg, []
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        where = ".".join(walked) or "the config"
        if isinstance(node, list):
            try:
                index = int(key)
            except ValueError:
                raise ConfigError(f"-o {path}: {where} is a list; give an index (0..{len(node) - 1}), not {key!r}") \
                    from None
            if not -len(node) <= index < len(node):
                raise ConfigError(f"-o {path}: {where} has {len(node)} items; index {index} is out of range")
            if last:
                node[index] = value
            else:
                if node[index] is None:
                    node[index] = {}
                node = node[index]
        elif isinstance(node, dict):
            if last:
                if key not in node:
                    log(f"-o {path}: {key!r} is a new key of {where} (added)")
                node[key] = value
            else:
                if key not in node or node[key] is None:
                    if key not in node:
                        log(f"-o {path}: {key!r} is a new section of {where} (added)")
                    node[key] = {}
                node = node[key]
        else:
            raise ConfigError(f"-o {path}: {where} is a value ({node!r}), not a section or a list")
        walked.append(key)
    return cfg


def load(path, opts=(), log=print):
    cfg = read_yaml(path)
    for opt in opts or ():
        apply_override(cfg, opt, log)
    if not is_ppcls_config(cfg):
        raise ConfigError(f"{path} is not a PaddleClas config (it needs both Arch: and Global:)")
    return cfg


def unread_keys(cfg):
    """Keys of the config this package does not read, for one log line."""
    out = [k for k in cfg if k not in TOP_KEYS]
    for section, keys in READ.items():
        for k in (cfg.get(section) or {}):
            if k not in keys:
                out.append(f"{section}.{k}")
    arch = cfg.get("Arch") or {}
    if arch.get("name") == "DistillationModel":
        out += [f"Arch.{k}" for k in arch if k not in ("name", "class_num", "pretrained_list", "freeze_params_list",
                                                       "infer_model_name", "models", "use_sync_bn", "frozen_mode")]
    for mode in ("Train", "Eval"):
        loader = ((cfg.get("DataLoader") or {}).get(mode) or {})
        for k in (loader.get("sampler") or {}):
            if k not in ("name", "batch_size", "shuffle", "drop_last"):
                out.append(f"DataLoader.{mode}.sampler.{k}")
        if loader.get("loader"):
            out.append(f"DataLoader.{mode}.loader (use --num_workers)")
    for k in ("Metric", "Infer"):
        if k in cfg:
            out.append(f"{k} (evaluation always reports top-1 and top-5)" if k == "Metric" else k)
    return out


def number(value, what):
    """A number, or a fraction as PaddleClas's configs write them (`scale: 1.0/255.0`, `sh: 1.0/3.0`)."""
    if isinstance(value, str):
        try:
            if "/" in value:
                num, den = value.split("/")
                return float(num) / float(den)
            return float(value)
        except ValueError:
            raise ConfigError(f"{what} {value!r} is not a number or a fraction like 1.0/255.0") from None
    return float(value)


def global_cfg(cfg):
    return cfg.get("Global") or {}


def sampler(cfg, mode):
    return (((cfg.get("DataLoader") or {}).get(mode) or {}).get("sampler") or {})


def batch_size(cfg, mode="Train"):
    value = sampler(cfg, mode).get("batch_size")
    if value is None:
        raise ConfigError(f"DataLoader.{mode}.sampler.batch_size is not set")
    return int(value)


def arch_copy(cfg):
    return copy.deepcopy(cfg.get("Arch") or {})
