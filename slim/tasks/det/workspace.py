"""Building ppdet components from one config dict, without leaking it into ppdet's global config.

ppdet's `create(name)` reads a process-wide `global_config`; `load_config` merges every yaml into it.
Two configs in one process (a teacher and a student) then overwrite each other's sections. Here each
build runs inside `ppdet_scope(cfg)`: the config is merged into a private copy of the registry, and the
global one is put back afterwards.
"""
import contextlib
import copy

from slim.distill.errors import ConfigError
from .compat import import_ppdet

# Top-level keys of PaddleDetection configs that are not registered classes (runtime.yml, readers, ...).
PPDET_KEYS = (
    "architecture", "num_classes", "metric", "map_type", "weights", "pretrain_weights", "norm_type",
    "use_gpu", "use_xpu", "use_mlu", "use_npu", "use_ema", "ema_decay", "ema_filter_no_grad", "log_iter",
    "save_dir", "snapshot_epoch", "print_flops", "print_params", "epoch", "worker_num", "find_unused_parameters",
    "use_fused_allreduce_gradients", "use_gpu_v2", "filename", "LearningRate", "OptimizerBuilder",
    "TrainDataset", "EvalDataset", "TestDataset", "TrainReader", "EvalReader", "TestReader", "export", "slim",
    "slim_method", "distill_loss", "amp", "fp16", "use_amp", "amp_level", "sync_bn", "data_format",
    "save_prediction_only", "classwise", "voc_eval_iou_thresh", "use_warmup", "ema_black_list", "cycle_epoch",
    "reference_gpus", "obj_prior_prob",
    # shared settings of PP-YOLOE(+) configs (ppyoloe_plus_crn.yml, the PPYOLOEDistill slim configs)
    "depth_mult", "width_mult", "for_distill", "custom_black_list", "trt", "eval_size", "exclude_nms",
    "exclude_post_process", "use_shared_conv",
)


def registered_names():
    import_ppdet()
    from ppdet.core.workspace import global_config
    return sorted(global_config)


def _snapshot(global_config):
    from ppdet.core.config.schema import SchemaDict
    saved = {}
    for key, value in global_config.items():
        if isinstance(value, SchemaDict):
            dup = value.copy()
            for k in list(dup.keys()):
                if isinstance(dup[k], (dict, list)):
                    dict.__setitem__(dup, k, copy.deepcopy(dup[k]))
            saved[key] = dup
        else:
            saved[key] = value
    return saved


def _ppdet_form(value, registered):
    """This package reads `!Class {...}` tags as `{type: Class, ...}`; ppdet's injection wants
    `{name: Class, ...}` for a dict naming a registered class."""
    if isinstance(value, dict):
        out = {k: _ppdet_form(v, registered) for k, v in value.items()}
        if out.get("type") in registered and "name" not in out:
            out["name"] = out.pop("type")
        return out
    if isinstance(value, list):
        return [_ppdet_form(v, registered) for v in value]
    return value


@contextlib.contextmanager
def ppdet_scope(cfg):
    """Inside, ppdet's `create()` sees `cfg` (and nothing of any other config)."""
    import_ppdet()
    from ppdet.core import workspace
    saved = _snapshot(workspace.global_config)
    try:
        registered = set(workspace.global_config)
        workspace.merge_config(_ppdet_form(copy.deepcopy(dict(cfg)), registered))
        yield workspace
    finally:
        workspace.global_config.clear()
        workspace.global_config.update(saved)


def create(cfg, name, **kwargs):
    """`ppdet.core.workspace.create(name)` with this config; errors say which section is wrong."""
    with ppdet_scope(cfg) as ws:
        try:
            return ws.create(name, **kwargs)
        except (ValueError, TypeError, KeyError, AssertionError) as e:
            raise ConfigError(f"ppdet could not build {name!r} from this config: {type(e).__name__}: {e}. "
                              f"Check the `{name}:` section and the sections it names.") from e


def build_architecture(cfg):
    arch = cfg.get("architecture")
    if not arch:
        raise ConfigError("A detection config needs `architecture:` (e.g. YOLOv3) and its sections "
                          "(YOLOv3: {backbone: ..., neck: ..., yolo_head: ...}).")
    if arch not in registered_names():
        raise ConfigError(f"architecture {arch!r} is not a ppdet 2.6 architecture.")
    return create(cfg, arch)

