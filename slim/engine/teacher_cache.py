"""Teacher-output cache: distil many students from one teacher at about the cost of training them alone.

    distill_train.py -t T.yml -c S.yml --teacher_cache cache/r50 [--teacher_cache_dtype float16]
                     [--teacher_cache_topk K] [--teacher_cache_rebuild] [--data_seed N]

The first run stores, for every training sample it visits, the teacher tensors its distillation pairs
compare (the teacher's side of each pair: logits and/or features, before connectors), keyed by
(epoch, sample index). A later run with the same key reads them and does not run the teacher; the teacher
is built only when an entry is missing (and then fills it). Exact replay needs the same augmented view of a
sample at the same (epoch, index): the data loader seeds each sample's random transforms from
(data seed, epoch, index) (slim/engine/data.py), and `--data_seed` (default: `--seed`) is separate from the
seed that initialises the student, so students of several seeds share one cache. A model that runs its own
frozen teacher (a PaddleClas DistillationModel: the task's `inner_teacher`) is served the same way: its
frozen models' outputs are stored, and its forward takes them instead of running those models.

Layout of a cache folder (numpy memmap shards: many readers, large arrays, no pickle per sample):
    meta.json                     the fingerprint (below) and each tensor's per-sample shape and dtype
    epoch_00000/valid.npy         one byte per sample: 1 once every tensor of that sample is written
    epoch_00000/<tensor>.npy      (num_samples, *shape) rows; with top-k, <tensor>.values/.indices/.rest
    .lock                         a file lock for creating meta.json and epoch folders
Each process writes the rows of the samples it sees (under paddle.distributed.launch every rank writes its
own) and any process reads any row. A row is marked valid only after it is written and flushed, so an entry
of a killed run is refilled, never read. Epoch folders are created whole under a temporary name and renamed.

Validity: meta.json records a fingerprint of everything that determines the entries: the teacher's weights
(file hash) and model config, the training data (config and sample files) and its seed, the batch layout,
the teacher tensors, the teacher's precision and the storage dtype. A run whose fingerprint differs never
reads the old entries: it stops naming what changed, or, with --teacher_cache_rebuild, deletes them and
refills the cache.

Storage: float16 by default (float32 on request, exact). `--teacher_cache_topk K` stores, for a per-sample
vector of logits (classification), the K largest logits, their indices and one value for all the others:
the logit that gives the other classes, uniformly, the probability mass they had at temperature 1 (FKD's
top-k soft labels with the rest spread evenly). Before filling, the size to write is estimated and a run
refuses to start when the disk lacks the space.

Test hook (environment variable, for the tests; never set it otherwise):
    SLIM_TEST_KILL_DURING_CACHE_WRITE=N   the process SIGKILLs itself at its N-th write, after writing the
                                          rows and before marking them valid, as a machine failing would
"""
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
from collections import OrderedDict

import numpy as np

from slim.distill.errors import ConfigError

VERSION = 1
META = "meta.json"
VALID = "valid"
STORAGE_DTYPES = ("float16", "float32")
_CHUNK = 1 << 20


def canonical(value):
    """A stable text for a config value (sorted keys; what json cannot write becomes its str)."""
    return json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))


def digest_of(value):
    return hashlib.sha256(canonical(value).encode()).hexdigest()


_FILE_DIGESTS = {}


def file_digest(path):
    """sha256 of a file's bytes (remembered per path, size and modification time in this process)."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _FILE_DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(_CHUNK), b""):
                h.update(block)
        _FILE_DIGESTS[key] = h.hexdigest()
    return _FILE_DIGESTS[key]


def part(about, value=None):
    """One component of a fingerprint: a short text for messages and the digest that is compared (of
    `value`, else of the text; a value's digest is shown after the text)."""
    if value is None:
        return {"about": str(about), "digest": digest_of(about)}
    digest = digest_of(value)
    return {"about": f"{about} [{digest[:12]}]", "digest": digest}


def file_part(path, what="weights"):
    digest = file_digest(path)
    return {"about": f"sha256 {digest[:12]} of {path}", "digest": digest}


def _file_name(name):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "tensor"


def _human(nbytes):
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(nbytes) < 1024 or unit == "TB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024.0
    return f"{nbytes:.1f} TB"


def _free_bytes(folder):
    fake = os.environ.get("SLIM_TEST_CACHE_FREE_BYTES")  # tests: a disk that is nearly full
    return int(fake) if fake else shutil.disk_usage(folder).free


class _Epoch:
    """The memmaps of one epoch folder."""

    def __init__(self, folder, files):
        self.folder = folder
        self.valid = np.load(os.path.join(folder, VALID + ".npy"), mmap_mode="r+")
        self.arrays = {f: np.load(os.path.join(folder, f + ".npy"), mmap_mode="r+") for f in files}

    def close(self):
        for array in [self.valid] + list(self.arrays.values()):
            mm = getattr(array, "_mmap", None)
            if mm is not None:
                mm.close()
        self.arrays = {}


class TeacherCache:
    """Teacher tensors of training samples on disk, keyed by (epoch, sample index).

    `parts`: the fingerprint components of this run (name -> part(...)); the storage dtype and top-k are
    added here. Call open(num_samples) first: True when the folder already knows the tensors' layout
    (their shapes); otherwise create(layout) once the teacher has run on one sample."""

    def __init__(self, root, parts, dtype="float16", topk=None, rebuild=False, log=print):
        dtype = str(dtype or "float16")
        if dtype not in STORAGE_DTYPES:
            raise ConfigError(f"--teacher_cache_dtype must be float16 or float32, got {dtype!r}.")
        if topk is not None and (int(topk) < 1):
            raise ConfigError(f"--teacher_cache_topk must be a positive number of classes, got {topk}.")
        self.root = str(root)
        self.dtype, self.topk, self.rebuild, self.log = dtype, (int(topk) if topk else None), rebuild, log
        self.parts = OrderedDict(parts)
        self.parts["storage"] = part(dtype + (f", top-{self.topk} logits" if self.topk else ""))
        self.layout = None  # OrderedDict tensor name -> {"shape": [...], "file": str, "topk": k or None}
        self.num_samples = None
        self._epochs = {}
        self._writes = 0
        self.read_samples = self.written_samples = 0

    # ----- opening, fingerprint -------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self):
        with open(os.path.join(self.root, ".lock"), "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _read_meta(self):
        path = os.path.join(self.root, META)
        if not os.path.isfile(path):
            return None
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError) as e:
            raise ConfigError(f"The teacher cache {self.root} has an unreadable {META} ({e}); delete the folder "
                              f"or pass --teacher_cache_rebuild to refill it.") from None

    def differences(self, meta):
        """What differs between the folder's fingerprint and this run's: lines naming each component."""
        old = meta.get("fingerprint") or {}
        lines = []
        if meta.get("version") != VERSION:
            lines.append(f"cache format (version {meta.get('version')}; this package writes {VERSION})")
        for name in list(self.parts) + [n for n in old if n not in self.parts]:
            mine, theirs = self.parts.get(name), old.get(name)
            if (mine or {}).get("digest") != (theirs or {}).get("digest"):
                lines.append(f"{name} (cache: {(theirs or {}).get('about', 'not recorded')}; this run: "
                             f"{(mine or {}).get('about', 'not recorded')})")
        if meta.get("num_samples") is not None and self.num_samples is not None \
                and int(meta["num_samples"]) != self.num_samples:
            lines.append(f"number of training samples (cache: {meta['num_samples']}; this run: {self.num_samples})")
        return lines

    def open(self, num_samples):
        """Check the folder against this run. Returns True when its layout is known (entries may be read)."""
        self.num_samples = int(num_samples)
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"--teacher_cache {self.root} cannot be created ({e}); give a folder that can be "
                              f"written.") from None
        with self._locked():
            meta = self._read_meta()
            if meta is not None:
                changed = self.differences(meta)
                if changed and not self.rebuild:
                    raise ConfigError(
                        f"The teacher cache {self.root} was filled for other settings, so its entries are not "
                        f"read. What changed: {'; '.join(changed)}. Pass --teacher_cache_rebuild to delete its "
                        f"entries and refill it from this run's teacher, or give another --teacher_cache folder.")
                if changed:
                    self._delete_entries()
                    self.log(f"teacher cache {self.root}: rebuilt (--teacher_cache_rebuild): its entries were made "
                             f"for other settings ({'; '.join(changed)}) and are deleted")
                    meta = None
            if meta is None:
                return False
            self.layout = OrderedDict((n, t) for n, t in meta["tensors"])
        return True

    def _delete_entries(self):
        for name in os.listdir(self.root):
            path = os.path.join(self.root, name)
            if name.startswith("epoch_") and os.path.isdir(path):
                shutil.rmtree(path)
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(self.root, META))

    def tensor_layout(self, arrays):
        """The layout of a batch of teacher tensors (name -> array (B, ...)), as create() takes it."""
        layout, used = OrderedDict(), set()
        for name, array in arrays.items():
            file = base = _file_name(name)
            n = 1
            while file in used:
                n, file = n + 1, f"{base}_{n}"
            used.add(file)
            shape = list(array.shape[1:])
            topk = None
            if self.topk and len(shape) == 1 and shape[0] > self.topk:
                topk = self.topk
            layout[name] = {"shape": shape, "file": file, "topk": topk}
        if self.topk and not any(t["topk"] for t in layout.values()):
            self.log(f"teacher cache: --teacher_cache_topk {self.topk} applies to vectors of more than {self.topk} "
                     f"logits per sample; none of the teacher tensors ({', '.join(layout)}) is one, so all are "
                     f"stored whole")
        return layout

    def create(self, layout):
        """Record the layout (when another process has not already): entries can then be written."""
        with self._locked():
            meta = self._read_meta()
            if meta is not None and not self.differences(meta):
                self.layout = OrderedDict((n, t) for n, t in meta["tensors"])
                return
            meta = {"version": VERSION, "fingerprint": self.parts, "num_samples": self.num_samples,
                    "dtype": self.dtype, "tensors": [[n, t] for n, t in layout.items()]}
            tmp = os.path.join(self.root, f".{META}.tmp-{os.getpid()}")
            with open(tmp, "w") as f:
                json.dump(meta, f, indent=1)
            os.replace(tmp, os.path.join(self.root, META))
            self.layout = OrderedDict(layout)

    # ----- sizes -------------------------------------------------------------------------------------
    def bytes_per_sample(self):
        size = np.dtype(self.dtype).itemsize
        total = 0
        for t in self.layout.values():
            if t["topk"]:
                total += t["topk"] * (size + 4) + size
            else:
                total += int(np.prod(t["shape"], dtype=np.int64)) * size
        return total + 1

    def plan(self, visits):
        """Log the size this run may write and refuse when the disk lacks it. `visits`: {epoch: number of
        samples this run reads in it}, over all processes."""
        per_sample = self.bytes_per_sample()
        cached = 0
        for epoch, count in visits.items():
            ep = self._epoch(epoch, create=False)
            if ep is not None:
                cached += min(int(ep.valid.sum()), count)
        total = sum(visits.values())
        needed = max(total - cached, 0) * per_sample
        free = _free_bytes(self.root)
        shapes = ", ".join(f"{n} {t['shape']}" + (f" top-{t['topk']}" if t["topk"] else "")
                           for n, t in self.layout.items())
        self.log(f"teacher cache {self.root}: {shapes} per sample in {self.dtype}, {_human(per_sample)} each; this "
                 f"run reads {total} entries over {len(visits)} epoch(s), {cached} already cached: about "
                 f"{_human(needed)} to write ({_human(free)} free)")
        if needed > free:
            raise ConfigError(
                f"The teacher cache would need about {_human(needed)} ({max(total - cached, 0)} entries of "
                f"{_human(per_sample)}) but {self.root} has {_human(free)} free; nothing was written. Free some "
                f"space, give --teacher_cache a folder on a larger disk, store less (--teacher_cache_dtype "
                f"float16, --teacher_cache_topk K for classification logits), or train fewer epochs.")
        return needed

    # ----- entries -----------------------------------------------------------------------------------
    def _files(self):
        files = []
        for t in self.layout.values():
            if t["topk"]:
                files += [t["file"] + ".values", t["file"] + ".indices", t["file"] + ".rest"]
            else:
                files.append(t["file"])
        return files

    def _epoch(self, epoch, create):
        epoch = int(epoch)
        if epoch in self._epochs:
            return self._epochs[epoch]
        folder = os.path.join(self.root, f"epoch_{epoch:05d}")
        if not os.path.isdir(folder):
            if not create:
                return None
            with self._locked():
                if not os.path.isdir(folder):
                    self._make_epoch(folder)
        for old in list(self._epochs):  # one epoch at a time is open (batches move forward)
            if old != epoch and len(self._epochs) >= 2:
                self._epochs.pop(old).close()
        self._epochs[epoch] = _Epoch(folder, self._files())
        return self._epochs[epoch]

    def _make_epoch(self, folder):
        tmp = f"{folder}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        n = self.num_samples
        np.lib.format.open_memmap(os.path.join(tmp, VALID + ".npy"), mode="w+", dtype=np.uint8, shape=(n,)).flush()
        for t in self.layout.values():
            if t["topk"]:
                k = t["topk"]
                specs = [(".values", self.dtype, (n, k)), (".indices", np.int32, (n, k)), (".rest", self.dtype, (n,))]
            else:
                specs = [("", self.dtype, (n,) + tuple(t["shape"]))]
            for suffix, dtype, shape in specs:
                np.lib.format.open_memmap(os.path.join(tmp, t["file"] + suffix + ".npy"), mode="w+", dtype=dtype,
                                          shape=shape).flush()
        os.replace(tmp, folder)

    @staticmethod
    def _by_epoch(keys):
        groups = OrderedDict()
        for pos, (epoch, index) in enumerate(keys):
            groups.setdefault(int(epoch), []).append((pos, int(index)))
        return groups

    def lookup(self, keys, count=True):
        """name -> array (B, *shape) of the samples `keys` [(epoch, index)], or None when one is missing."""
        if self.layout is None:
            return None
        groups = self._by_epoch(keys)
        eps = {}
        for epoch, items in groups.items():
            ep = self._epoch(epoch, create=False)
            if ep is None or not ep.valid[[i for _, i in items]].all():
                return None
            eps[epoch] = ep
        out = OrderedDict()
        for name, t in self.layout.items():
            parts = []
            for epoch, items in groups.items():
                rows = np.array([i for _, i in items])
                parts.append(self._read(eps[epoch], t, rows))
            out[name] = parts[0] if len(parts) == 1 else np.concatenate(parts)
        if len(groups) > 1:  # rows in the batch's order
            order = np.argsort([pos for items in groups.values() for pos, _ in items])
            out = OrderedDict((n, a[order]) for n, a in out.items())
        if count:
            self.read_samples += len(keys)
        return out

    def _read(self, ep, t, rows):
        f = t["file"]
        if not t["topk"]:
            return np.asarray(ep.arrays[f][rows])
        values = np.asarray(ep.arrays[f + ".values"][rows], dtype=np.float32)
        indices = np.asarray(ep.arrays[f + ".indices"][rows], dtype=np.int64)
        rest = np.asarray(ep.arrays[f + ".rest"][rows], dtype=np.float32)
        full = np.repeat(rest[:, None], t["shape"][0], axis=1)
        np.put_along_axis(full, indices, values, axis=1)
        return full

    def check_batch(self, arrays, batch_size):
        """The teacher tensors of a batch must have one row per sample and the recorded per-sample shapes."""
        for name, array in arrays.items():
            t = self.layout.get(name)
            if t is None:
                raise ConfigError(f"The teacher tensor {name!r} is not in the teacher cache {self.root} "
                                  f"(it holds {', '.join(self.layout)}).")
            if array.ndim == 0 or array.shape[0] != batch_size:
                raise ConfigError(f"The teacher tensor {name!r} has shape {list(array.shape)}, not one row per sample "
                                  f"of the batch ({batch_size}): it cannot be cached per sample; train without "
                                  f"--teacher_cache.")
            if list(array.shape[1:]) != list(t["shape"]):
                raise ConfigError(f"The teacher tensor {name!r} has per-sample shape {list(array.shape[1:])} in this "
                                  f"batch and {t['shape']} in the cache: the cache stores fixed shapes, so the "
                                  f"training inputs must have one size (a fixed crop or resize, no multi-scale "
                                  f"batches); train without --teacher_cache otherwise.")

    def store(self, keys, arrays):
        """Write the rows of the samples `keys` (name -> array (B, ...)), then mark them valid."""
        self.check_batch(arrays, len(keys))
        groups = self._by_epoch(keys)
        for epoch, items in groups.items():
            ep = self._epoch(epoch, create=True)
            pos = np.array([p for p, _ in items])
            rows = np.array([i for _, i in items])
            for name, t in self.layout.items():
                self._write(ep, t, rows, np.asarray(arrays[name])[pos])
            for array in ep.arrays.values():
                array.flush()
            self._test_kill()
            ep.valid[rows] = 1
            ep.valid.flush()
        self.written_samples += len(keys)

    def _write(self, ep, t, rows, data):
        f = t["file"]
        if not t["topk"]:
            ep.arrays[f][rows] = data.astype(self.dtype)
            return
        k = t["topk"]
        data = data.astype(np.float32)
        indices = np.argpartition(-data, k - 1, axis=1)[:, :k]
        values = np.take_along_axis(data, indices, axis=1)
        others = data.copy()
        np.put_along_axis(others, indices, -np.inf, axis=1)
        top = others.max(axis=1, keepdims=True)
        rest = top[:, 0] + np.log(np.mean(np.exp(others - top), axis=1) * others.shape[1]
                                  / (others.shape[1] - k))
        ep.arrays[f + ".values"][rows] = values.astype(self.dtype)
        ep.arrays[f + ".indices"][rows] = indices.astype(np.int32)
        ep.arrays[f + ".rest"][rows] = rest.astype(self.dtype)

    def _test_kill(self):
        kill_at = os.environ.get("SLIM_TEST_KILL_DURING_CACHE_WRITE")
        self._writes += 1
        if kill_at and int(kill_at) == self._writes:
            os.kill(os.getpid(), signal.SIGKILL)

    def first_entry(self):
        """The tensors of one cached sample (a batch of 1), e.g. to size connectors; None when there is none."""
        if self.layout is None:
            return None
        for name in sorted(os.listdir(self.root)):
            if not re.fullmatch(r"epoch_\d+", name):
                continue
            ep = self._epoch(int(name[6:]), create=False)
            valid = np.flatnonzero(np.asarray(ep.valid))
            if len(valid):
                return self.lookup([(int(name[6:]), int(valid[0]))], count=False)
        return None

    def close(self):
        for ep in self._epochs.values():
            ep.close()
        self._epochs = {}


class TeacherSource:
    """A teacher for a run with a teacher-output cache: `build(log)` makes the frozen model with its weights
    (called on first need only, or never when every entry is cached), `parts` its fingerprint components
    ("teacher weights", "teacher model"). `model`: the teacher when it is already built."""

    def __init__(self, build, parts, model=None):
        self.build, self.parts, self.model = build, OrderedDict(parts), model


def layer_parts(model):
    """Fingerprint components of an already built teacher: its weights' bytes and its layers. `model` may be
    a dict {name: Layer} of several frozen models (their keys prefixed by the name)."""
    layers = model if isinstance(model, dict) else {"": model}
    h = hashlib.sha256()
    for prefix, layer in layers.items():
        for name, value in sorted(layer.state_dict().items()):
            h.update((f"{prefix}.{name}" if prefix else name).encode())
            h.update(np.ascontiguousarray(value.numpy()).tobytes())
    weights = h.hexdigest()
    what = ", ".join(f"{p} ({type(m).__name__})" if p else type(m).__name__ for p, m in layers.items())
    return OrderedDict([("teacher weights", {"about": f"sha256 {weights[:12]} of the teacher's state dict",
                                             "digest": weights}),
                        ("teacher model", part(f"{what} layers",
                                               repr(model) if not isinstance(model, dict)
                                               else {p: repr(m) for p, m in layers.items()}))])
