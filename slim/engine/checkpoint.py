"""Checkpoints: written atomically, student weights alone in `model.pdparams`.

A checkpoint folder (`iter_N/`, `best_model/`) holds:
    model.pdparams       the student's state dict only: loads into the plain model (paddleseg, ppdet, ...);
                         with `ema:` on, the averaged weights
    ema.pdparams         with `ema:` on, the weights being trained and the average's accumulator (ema.py)
    connectors.pdparams  the distillation connectors (absent when there are none)
    model.pdopt          optimizer state, learning-rate schedule included
    train_state.pdstates iteration, epoch, best metric, random states
    metrics.json         evaluation results, when the folder was written after an evaluation
    manifest.json        written last: each file's size and sha256

Each folder is first written under a temporary name (`.iter_N.tmp-*`) and then renamed, so a crash while
saving never leaves a half-written checkpoint in place of a good one. `--resume_model auto` takes the newest
`iter_N` that reads back completely (find_latest_checkpoint): temporary folders of a killed save, folders
missing a file and files that cannot be read (truncated) are skipped, each with a line saying why.

Integrity: manifest.json lists every file of the folder with its size and sha256, written after the files
and before the rename. Whatever loads from a folder that has one checks the files it reads first (resume,
`auto`, tools/eval.py, tools/export.py, --init_weights, teacher weights, pipelines): `auto` skips a folder whose
bytes changed, naming the file; a folder or file given by name is refused with a ConfigError that names
`--skip_verify`, the flag that loads it anyway. Folders without a manifest (older runs, users' own .pdparams)
load as before. A full disk while saving is a DiskFullError (storage.py): one line, the partial folder
removed, earlier checkpoints kept; a checkpoint larger than the free space is refused before it is written.

Test hooks (environment variables, for the tests of the points above; never set them otherwise):
    SLIM_TEST_KILL_DURING_SAVE=N   the process SIGKILLs itself right after writing model.pdparams into the
                                   temporary folder of `iter_N`, as a machine failing mid-save would
    SLIM_TEST_SLOW_SAVE=SECONDS    every save sleeps that long after writing model.pdparams (to send a
                                   signal while a save is under way)
    SLIM_TEST_ENOSPC=checkpoint:N  the N-th save of this process runs out of disk space after writing
                                   model.pdparams (storage.py)
"""
import json
import os
import pickle
import re
import shutil
import signal
import tempfile
import time

import numpy as np
import paddle

from slim.distill.errors import ConfigError
from .storage import ensure_space, sha256_of, writing

MODEL_FILE, CONNECTOR_FILE, OPT_FILE, STATE_FILE, EMA_FILE = (
    "model.pdparams", "connectors.pdparams", "model.pdopt", "train_state.pdstates", "ema.pdparams")
MANIFEST_FILE = "manifest.json"
SKIP_VERIFY_FLAG = "--skip_verify"
_ITER_RE = re.compile(r"^iter_(\d+)$")
_TMP_RE = re.compile(r"^\.iter_\d+\.tmp-")  # save_checkpoint's temporary folder
_OLD_RE = re.compile(r"^iter_\d+\.old-\d+$")  # _replace_dir's copy being replaced
# what resuming reads: key -> file; the first three must be there
_RESUME_FILES = {"model": MODEL_FILE, "optimizer": OPT_FILE, "state": STATE_FILE, "connectors": CONNECTOR_FILE,
                 "ema": EMA_FILE}
_REQUIRED = ("model", "optimizer", "state")


def _replace_dir(tmp_dir, final_dir):
    """Move tmp_dir to final_dir; an existing final_dir is swapped out first and then deleted."""
    trash = None
    if os.path.exists(final_dir):
        trash = f"{final_dir}.old-{os.getpid()}"
        os.replace(final_dir, trash)
    os.replace(tmp_dir, final_dir)
    if trash:
        shutil.rmtree(trash, ignore_errors=True)


def state_nbytes(obj):
    """The bytes of the tensors and arrays in a (nested) state: about the size of its saved file."""
    if isinstance(obj, dict):
        return sum(state_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(state_nbytes(v) for v in obj)
    if isinstance(obj, paddle.Tensor):
        return int(np.prod(obj.shape, dtype=np.int64)) * obj.element_size()
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    return 0


def save_checkpoint(path, model_state, connector_state=None, optimizer_state=None, train_state=None,
                    metrics=None, ema_state=None):
    """Write a checkpoint folder atomically (module docstring); a full disk is a DiskFullError, with the
    partial folder removed and every earlier checkpoint kept."""
    parent = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(os.path.normpath(path))
    os.makedirs(parent, exist_ok=True)
    kept = (f"earlier checkpoints in {parent} are kept. Free some space or give --save_dir on a larger disk, then "
            f"continue with --resume_model auto.")
    hint = f"The partial {name} was removed; {kept}"
    files = [(MODEL_FILE, model_state), (CONNECTOR_FILE, connector_state or None),
             (OPT_FILE, optimizer_state), (EMA_FILE, ema_state)]
    total = sum(state_nbytes(state) for _, state in files)
    ensure_space(parent, total, f"The checkpoint {name}", hint=kept[0].upper() + kept[1:])
    with writing(parent, f"the checkpoint {name}", total, hint):
        tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a checkpoint folder is an ordinary folder
    try:
        for file, state in files:
            if state is None:
                continue
            with writing(os.path.join(path, file), f"the checkpoint {name} ({file})", state_nbytes(state), hint,
                         kind="checkpoint" if file == OPT_FILE else None):
                paddle.save(state, os.path.join(tmp, file))
            if file == MODEL_FILE:
                _test_hooks_mid_save(path)
        with writing(path, f"the checkpoint {name} ({STATE_FILE}, metrics.json, {MANIFEST_FILE})", None, hint):
            if train_state is not None:  # pickle: paddle.load would turn numpy's RNG state into tensors
                with open(os.path.join(tmp, STATE_FILE), "wb") as f:
                    pickle.dump(train_state, f)
            if metrics is not None:
                with open(os.path.join(tmp, "metrics.json"), "w") as f:
                    json.dump(metrics, f, indent=1)
            write_manifest(tmp)
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


# ----- integrity: manifest.json ---------------------------------------------------------------------
_VERIFY = {"enabled": True}


def set_verify(enabled):
    """Check manifests before loading (the default), or not (`--skip_verify`)."""
    _VERIFY["enabled"] = bool(enabled)


def write_manifest(folder):
    """manifest.json: size and sha256 of every file in `folder` (written last, so it covers them all)."""
    files = {}
    for file in sorted(os.listdir(folder)):
        full = os.path.join(folder, file)
        if file != MANIFEST_FILE and os.path.isfile(full):
            files[file] = {"bytes": os.path.getsize(full), "sha256": sha256_of(full)}
    tmp = os.path.join(folder, f".{MANIFEST_FILE}.tmp")
    with open(tmp, "w") as f:
        json.dump({"format": 1, "files": files}, f, indent=1)
    os.replace(tmp, os.path.join(folder, MANIFEST_FILE))


def verify_files(folder, names=None):
    """None when `folder` has no manifest.json (nothing to check) or when the files it lists (only `names`,
    when given) have their recorded size and sha256; else a sentence naming the first file that differs."""
    manifest_path = os.path.join(folder, MANIFEST_FILE)
    if not _VERIFY["enabled"] or not os.path.isfile(manifest_path):
        return None
    try:
        with open(manifest_path) as f:
            listed = json.load(f)["files"]
        listed = {str(k): (int(v["bytes"]), str(v["sha256"])) for k, v in listed.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return f"its {MANIFEST_FILE} cannot be read ({type(e).__name__}: {e}), so its files cannot be checked"
    for name in (names if names is not None else sorted(listed)):
        if name not in listed:
            continue
        size, digest = listed[name]
        full = os.path.join(folder, name)
        if not os.path.isfile(full):
            return f"{name} is listed in its {MANIFEST_FILE} but missing"
        actual = os.path.getsize(full)
        if actual < size:
            return f"{name} cannot be read, it is truncated ({actual} of the {size} bytes its {MANIFEST_FILE} records)"
        if actual != size:
            return f"{name} has {actual} bytes where its {MANIFEST_FILE} records {size} (changed after it was saved)"
        got = sha256_of(full)
        if got != digest:
            return (f"the sha256 of {name} ({got[:12]}) differs from its {MANIFEST_FILE} ({digest[:12]}): its bytes "
                    f"changed after it was saved (damaged storage, an interrupted copy or an edit)")
    return None


def _damaged(what, path, problem):
    return ConfigError(f"{what} {path} is damaged: {problem}. Copy it again from a good source, or pick another "
                       f"checkpoint; {SKIP_VERIFY_FLAG} loads it anyway (at your own risk).")


def _test_hooks_mid_save(path):
    """SLIM_TEST_SLOW_SAVE and SLIM_TEST_KILL_DURING_SAVE (see the module docstring); nothing when unset."""
    delay = os.environ.get("SLIM_TEST_SLOW_SAVE")
    if delay:
        time.sleep(float(delay))
    kill_at = os.environ.get("SLIM_TEST_KILL_DURING_SAVE")
    if kill_at and os.path.basename(os.path.normpath(path)) == f"iter_{int(kill_at)}":
        os.kill(os.getpid(), signal.SIGKILL)


def iter_checkpoints(save_dir):
    """[(iteration, path)] of the `iter_N` folders in save_dir, oldest first."""
    if not os.path.isdir(save_dir):
        return []
    found = []
    for name in os.listdir(save_dir):
        match = _ITER_RE.match(name)
        if match and os.path.isfile(os.path.join(save_dir, name, MODEL_FILE)):
            found.append((int(match.group(1)), os.path.join(save_dir, name)))
    return sorted(found)


def prune_checkpoints(save_dir, keep):
    """Delete the oldest `iter_N` folders beyond the newest `keep` (keep <= 0 keeps all)."""
    if keep is None or keep <= 0:
        return
    for _, path in iter_checkpoints(save_dir)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def resolve_weights_path(path, what="weights"):
    """A checkpoint folder or a .pdparams file -> the .pdparams file; a clear error when missing."""
    if path and os.path.isdir(path):
        path = os.path.join(path, MODEL_FILE)
    if not path or not os.path.isfile(path):
        raise ConfigError(f"{what} not found: {path!r}. Give a `.pdparams` file or a checkpoint folder "
                          f"holding {MODEL_FILE}.")
    return path


def load_state(path, what="weights"):
    path = resolve_weights_path(path, what)
    problem = verify_files(os.path.dirname(os.path.abspath(path)), [os.path.basename(path)])
    if problem:
        raise _damaged(f"The {what} file", path, problem)
    try:
        return paddle.load(path)
    except Exception as e:  # a truncated or foreign file
        raise ConfigError(f"Could not read {what} from {path}: the file is truncated (an interrupted copy or "
                          f"download) or is not a Paddle weights file ({type(e).__name__}: {e}). Give a complete "
                          f".pdparams file, e.g. copy or download it again.") from None


def read_model_state(path, what="weights"):
    """The model's state dict from a weights file or checkpoint folder (nested forms unwrapped)."""
    state = load_state(path, what)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # checkpoints of some tools nest the weights
    elif isinstance(state, dict) and isinstance(state.get("training_weights"), dict):
        state = state["training_weights"]  # ema.pdparams: the weights as trained, not averaged
    if not isinstance(state, dict):
        raise ConfigError(f"{what} {path}: the file holds a {type(state).__name__}, not a model's weights "
                          f"(a dict of named tensors).")
    return state


def load_model_weights(model, path, what="weights", strict=True, log=None):
    """Load a state dict into `model`; missing/unexpected keys or shape mismatches are a clear error."""
    state = read_model_state(path, what)
    where = f"{what} {resolve_weights_path(path)}"
    note = (" A teacher must load every parameter: one left at its random start would teach noise."
            if "teacher" in what.lower() else "")
    apply_state(model, state, where, strict, note=note)
    if log is not None:
        own = model.state_dict()
        log(f"{where}: loaded {sum(1 for k in own if k in state)}/{len(own)} tensors into {type(model).__name__}")
    return path


def state_mismatch(model, state):
    """(tensors of `model` that `state` fits by name and shape, missing, unexpected, wrong shape) as lists."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k}: file {list(state[k].shape)} vs model {list(own[k].shape)}" for k in own
             if k in state and hasattr(state[k], "shape") and list(state[k].shape) != list(own[k].shape)]
    fit = len(own) - len(missing) - len(wrong)
    return fit, missing, unexpected, wrong


def describe_mismatch(model, state, what, missing, unexpected, wrong, fit):
    def few(items):
        return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")
    details = []
    if wrong:
        details.append(f"shape mismatch ({len(wrong)}): {few(wrong)}")
    if missing:
        details.append(f"missing in the file ({len(missing)}): {few(missing)}")
    if unexpected:
        details.append(f"in the file but not in the model ({len(unexpected)}): {few(unexpected)}")
    total = len(model.state_dict())
    return (f"{what} do not fit {type(model).__name__}: only {fit}/{total} of its tensors would load; "
            + "; ".join(details) + ".")


def apply_state(model, state, what="weights", strict=True, note=""):
    """set_state_dict, but missing/unexpected keys or shape mismatches are a clear error, not a warning."""
    own = model.state_dict()
    fit, missing, unexpected, wrong = state_mismatch(model, state)
    if wrong or (strict and (missing or unexpected)):
        raise ConfigError(describe_mismatch(model, state, what, missing, unexpected, wrong, fit)
                          + " Check that the config builds the model the weights were trained with." + note)
    model.set_state_dict({k: v for k, v in state.items() if k in own})


def _read_resumable(path):
    """(everything resuming needs from the folder, None) or (None, why it cannot be resumed)."""
    missing = [_RESUME_FILES[k] for k in _REQUIRED if not os.path.isfile(os.path.join(path, _RESUME_FILES[k]))]
    if missing:
        return None, (f"no {' and no '.join(missing)} (a copy of the weights alone, like best_model/, or a "
                      f"folder written incompletely)")
    problem = verify_files(path)
    if problem:
        return None, problem
    out = {}
    for key, name in _RESUME_FILES.items():
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            continue
        try:
            if key == "state":  # pickle: paddle.load would turn numpy's RNG state into tensors
                with open(file, "rb") as f:
                    out[key] = pickle.load(f)
            else:
                out[key] = paddle.load(file)
        except Exception as e:  # truncated (a save cut short, a full disk) or not a checkpoint file
            return None, f"{name} cannot be read, it is truncated or corrupt ({type(e).__name__}: {e})"
        if key == "state" and not (isinstance(out[key], dict) and "iter" in out[key]):
            return None, f"{name} does not hold a training state"
    return out, None


def _not_a_checkpoint_folder(path):
    if os.path.exists(path):
        return ConfigError(f"--resume_model {path!r} is a file, not a checkpoint folder: give the folder that "
                           f"holds it (e.g. output/iter_1000, holding {MODEL_FILE} and {STATE_FILE}), or `auto` "
                           f"for the newest complete one in --save_dir. To start a new run from weights alone, "
                           f"use --init_weights.")
    return ConfigError(f"--resume_model {path!r} does not exist (expected a checkpoint folder such as "
                       f"output/iter_1000 holding {MODEL_FILE} and {STATE_FILE}, or `auto` for the newest "
                       f"complete one in --save_dir).")


def read_checkpoint(path):
    """Everything in a checkpoint folder (for resuming): dict with model, connectors, optimizer, state, ema."""
    if not os.path.isdir(path):
        raise _not_a_checkpoint_folder(path)
    problem = verify_files(path)
    if problem:
        raise _damaged("Checkpoint", path, problem + " (--resume_model auto skips such folders)")
    out, problem = _read_resumable(path)
    if problem:
        raise ConfigError(f"Checkpoint {path} cannot be resumed: {problem}. Resume from another iter_N folder, "
                          f"or pass --resume_model auto to take the newest complete one in --save_dir.")
    return out


def check_resumable(resume_model, model, save_dir=None):
    """Before a run writes anything: the checkpoint to resume is complete and holds `model`'s weights (by
    name and shape), else a ConfigError that says what is wrong, so that --save_dir stays as it was.

    An explicit folder is checked fully (its files, the training state, the weights). With `auto`, the
    newest iter_N of save_dir that has its files and reads back is checked against the model (the trainer
    skips incomplete ones itself, saying why)."""
    if not resume_model:
        return
    if isinstance(resume_model, str) and resume_model.lower() == "auto":
        for _, path in reversed(iter_checkpoints(save_dir) if save_dir else []):
            if any(not os.path.isfile(os.path.join(path, _RESUME_FILES[k])) for k in _REQUIRED):
                continue
            if verify_files(path):
                continue  # damaged: the trainer skips it and logs why
            try:
                state = paddle.load(os.path.join(path, MODEL_FILE))
            except Exception:
                continue  # truncated: the trainer skips it and logs why
            _check_fits(path, model, state)
            return
        return
    path = resume_model
    if not os.path.isdir(path):
        raise _not_a_checkpoint_folder(path)
    missing = [_RESUME_FILES[k] for k in _REQUIRED if not os.path.isfile(os.path.join(path, _RESUME_FILES[k]))]
    if missing:
        raise ConfigError(f"Checkpoint {path} cannot be resumed: it has no {' and no '.join(missing)} (a copy of "
                          f"the weights alone, like best_model/, or a folder written incompletely). Resume from "
                          f"another iter_N folder, pass --resume_model auto to take the newest complete one in "
                          f"--save_dir, or start a new run from these weights with --init_weights "
                          f"{os.path.join(path, MODEL_FILE)}. Nothing in --save_dir was changed.")
    problem = verify_files(path)
    if problem:
        raise _damaged("Checkpoint", path, problem + " (--resume_model auto skips such folders); nothing in "
                                                     "--save_dir was changed")
    try:
        with open(os.path.join(path, STATE_FILE), "rb") as f:
            train_state = pickle.load(f)
        state = paddle.load(os.path.join(path, MODEL_FILE))
    except Exception as e:
        raise ConfigError(f"Checkpoint {path} cannot be resumed: a file is truncated or corrupt "
                          f"({type(e).__name__}: {e}). Resume from another iter_N folder, or pass "
                          f"--resume_model auto to take the newest complete one in --save_dir.") from None
    if not (isinstance(train_state, dict) and "iter" in train_state):
        raise ConfigError(f"Checkpoint {path} cannot be resumed: {STATE_FILE} does not hold a training state. "
                          f"Resume from another iter_N folder.")
    _check_fits(path, model, state)


def _check_fits(path, model, state):
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ConfigError(f"Checkpoint {path}: {MODEL_FILE} holds a {type(state).__name__}, not a model's weights.")
    fit, missing, unexpected, wrong = state_mismatch(model, state)
    if missing or unexpected or wrong:
        raise ConfigError(
            describe_mismatch(model, state, f"The weights of checkpoint {path}", missing, unexpected, wrong, fit)
            + " The checkpoint was saved from another model: resume only with the config (and distillation "
              "settings) that wrote it, or start a new run in another --save_dir. Nothing in --save_dir was "
              "changed.")


PREVIOUS_RUN = "previous_run_"
_RUN_OUTPUTS = ("best_model", "history.jsonl", "vdl", "record.txt")


def check_save_dir_usable(save_dir):
    """--save_dir is a folder, or can be made one, that this user can write; else a ConfigError."""
    if not save_dir:
        return
    path = probe = os.path.abspath(save_dir)
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        if probe == path:
            raise ConfigError(f"--save_dir {save_dir} is an existing file, not a folder. Give a folder for the "
                              f"run's outputs (e.g. --save_dir output/run1); the file was left as it is.")
        raise ConfigError(f"--save_dir {save_dir} cannot be created: {probe} is a file, not a folder. Give "
                          f"another --save_dir.")
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "is not writable" if probe == path else f"cannot be created: {probe} is not writable"
        raise ConfigError(f"--save_dir {save_dir} {what} by this user (permission denied). Give a folder you can "
                          f"write to, or give yourself write access (chmod u+w {probe}).")


def set_aside_previous_run(save_dir, log_file="record.txt"):
    """Move an earlier run's outputs (iter_N, best_model, the log, history.jsonl, vdl and folders of a save
    that was cut short) into SAVE_DIR/previous_run_<N>/ (the first free N); nothing is deleted. Returns the
    lines to log (none when there was nothing to move)."""
    if not os.path.isdir(save_dir):
        return []
    outputs = set(_RUN_OUTPUTS) | {log_file}
    names = [n for n in os.listdir(save_dir)
             if n in outputs or _ITER_RE.match(n) or _TMP_RE.match(n) or _OLD_RE.match(n)]
    if not names:
        return []
    names.sort(key=lambda n: (0, int(_ITER_RE.match(n).group(1))) if _ITER_RE.match(n) else (1, n))
    n = 1
    while os.path.exists(os.path.join(save_dir, f"{PREVIOUS_RUN}{n}")):
        n += 1
    dest = os.path.join(save_dir, f"{PREVIOUS_RUN}{n}")
    moved = []
    try:
        os.makedirs(dest)
        for name in names:
            os.replace(os.path.join(save_dir, name), os.path.join(dest, name))
            moved.append(name)
    except OSError as e:
        raise ConfigError(f"--overwrite: could not move the earlier run's files into {dest} ({e}); moved so far: "
                          f"{', '.join(moved) or 'nothing'}. Nothing was deleted; free the folder by hand or "
                          f"choose another --save_dir.") from None
    shown = ", ".join(moved[:8]) + (f" (+{len(moved) - 8} more)" if len(moved) > 8 else "")
    return [f"--overwrite: moved the earlier run's {shown} into {dest} (nothing was deleted); starting a new run "
            f"in {save_dir}"]


def find_latest_checkpoint(save_dir, log=print):
    """The newest `iter_N` folder of save_dir that can be resumed, read: (path, checkpoint), or (None, None).

    Left for a human, never deleted, and each named on `log` with the reason: temporary folders of a save
    that was killed (`.iter_N.tmp-*`, `iter_N.old-*`), `iter_N` folders missing a file, and folders with a
    file that cannot be read (truncated)."""
    if not os.path.isdir(save_dir):
        return None, None
    candidates = []
    for name in sorted(os.listdir(save_dir)):
        path = os.path.join(save_dir, name)
        if not os.path.isdir(path):
            continue
        match = _ITER_RE.match(name)
        if match:
            candidates.append((int(match.group(1)), path))
        elif _TMP_RE.match(name):
            log(f"--resume_model auto: skipped {path}: the temporary folder of a save that did not finish (the "
                f"process was killed while writing it); it can be deleted")
        elif _OLD_RE.match(name):
            log(f"--resume_model auto: skipped {path}: an older copy set aside while a checkpoint was being "
                f"replaced (the process was killed then); resume from it by path if it is the one you need")
    for _, path in sorted(candidates, reverse=True):
        ckpt, problem = _read_resumable(path)
        if problem is None:
            return path, ckpt
        log(f"--resume_model auto: skipped {path}: {problem}")
    return None, None


def _longest_prefix(key, names):
    best = None
    for name in names:
        if key.startswith(name + "_") and (best is None or len(name) > len(best)):
            best = name
    return best


def portable_optimizer_state(state, named_params):
    """Optimizer state keyed by parameter paths ('@backbone.conv1.weight_velocity_0') instead of the names
    Paddle generates (which depend on how many layers were built before, so they change between runs)."""
    path_of = {p.name: path for path, p in named_params}
    out = {}
    for key, value in state.items():
        name = _longest_prefix(key, path_of)
        out[f"@{path_of[name]}{key[len(name):]}" if name else key] = value
    return out


def restore_optimizer_state(state, named_params):
    """The inverse of portable_optimizer_state for the parameters of this run."""
    name_of = {path: p.name for path, p in named_params}
    out = {}
    for key, value in state.items():
        if key.startswith("@"):
            path = _longest_prefix(key[1:], name_of)
            if path is None:
                raise ConfigError(f"The checkpoint's optimizer state has an entry for {key[1:]!r}, which this "
                                  f"model does not have: it was saved from another model or distill config.")
            key = name_of[path] + key[1 + len(path):]
        out[key] = value
    return out
