"""Teacher-output cache: distil many students from one teacher at about the cost of training them alone.

    distill_train.py -t T.yml -c S.yml --teacher_cache cache/r50 [--teacher_cache_dtype float16]
                     [--teacher_cache_topk K] [--teacher_cache_rebuild] [--data_seed N]

The first run stores, for every training sample it visits, the teacher tensors its distillation pairs
compare (the teacher's side of each pair: logits and/or features, before connectors), keyed by
(epoch, sample index); when the collate mixes each batch (Mixup, Cutmix: what a sample is depends on its batch),
by (epoch, place in that epoch's batches), the mixing replayed from the data seed (slim/engine/data.py). A later run with the same key reads them and does not run the teacher; the teacher
is built only when an entry is missing (and then fills it). Exact replay needs the same augmented view of a
sample at the same (epoch, index): the data loader seeds each sample's random transforms from
(data seed, epoch, index) (slim/engine/data.py), and `--data_seed` (default: `--seed`) is separate from the
seed that initialises the student, so students of several seeds share one cache. A model that runs its own
frozen teacher (a PaddleClas DistillationModel: the task's `inner_teacher`) is served the same way: its
frozen models' outputs are stored, and its forward takes them instead of running those models.

Layout of a cache folder (numpy memmap shards: many readers, large arrays, no pickle per sample):
    meta.json                     the fingerprint (below) and each tensor's per-sample shape and dtype
    epoch_00000/valid.npy         one byte per sample: 1 once every tensor of that sample is written
    epoch_00000/crc.npy           one zlib.crc32 per sample, of the bytes of all its rows (in layout order)
    epoch_00000/<tensor>.npy      (num_samples, *shape) rows; with top-k, <tensor>.values/.indices/.rest
    .lock                         a file lock for creating meta.json and epoch folders
Each process writes the rows of the samples it sees (under paddle.distributed.launch every rank writes its
own) and any process reads any row. A row's checksum is written with it, and the row is marked valid only
after both are flushed, so an entry of a killed run is refilled, never read. Epoch folders are created whole
(their disk space reserved, so a full disk is an error at creation, not a crash while writing through the
memory map) under a temporary name and renamed.

Integrity (caches copied between nodes, disks that fill, storage that flips bits): when an epoch folder is
opened, each shard's size is checked against the shape in its header; a truncated shard's missing rows are
entries to refill. Every entry's checksum is checked when it is read; an entry that fails is treated as
missing: the teacher recomputes and rewrites it (the log says so, and the run's closing line counts them).
A shard whose header cannot be read stops the run naming it and `--teacher_cache_repair`, which (like
`slim-cache verify DIR --repair`) scans the whole cache first and marks every damaged entry for refilling.
`slim-cache verify DIR` reports damaged entries without changing anything (exit status 3 when it finds some).

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

Test hooks (environment variables, for the tests; never set them otherwise):
    SLIM_TEST_KILL_DURING_CACHE_WRITE=N   the process SIGKILLs itself at its N-th write, after writing the
                                          rows and before marking them valid, as a machine failing would
    SLIM_TEST_ENOSPC=cache:N              the N-th epoch folder this process creates finds the disk full
"""
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import zlib
from collections import OrderedDict

import numpy as np

from slim.distill.errors import ConfigError
from .storage import free_bytes, human, writing

VERSION = 2  # 2: per-entry checksums (crc.npy)
META = "meta.json"
VALID = "valid"
CRC = "crc"
STORAGE_DTYPES = ("float16", "float32")
REPAIR_FLAG = "--teacher_cache_repair"
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


class DamagedShard(ConfigError):
    """A shard whose .npy header cannot be read, or does not match the cache's layout."""


def _row_shape(shape):
    return tuple(int(d) for d in shape[1:])


def shard_header(path, rows, dtype=None, row_shape=None):
    """(offset of the data, dtype, rows expected, bytes expected, bytes on disk) of a .npy shard; DamagedShard
    when its header cannot be read or differs from the layout (`rows`, and `dtype`/`row_shape` when given)."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version not in readers:
                raise ValueError(f"npy format version {version}")
            shape, fortran, found = readers[version](f)
            offset = f.tell()
    except (OSError, ValueError, SyntaxError) as e:
        raise DamagedShard(f"{path}: its header cannot be read ({type(e).__name__}: {e})") from None
    if (fortran or len(shape) < 1 or int(shape[0]) != int(rows) or (dtype is not None and found != np.dtype(dtype))
            or (row_shape is not None and _row_shape(shape) != tuple(row_shape))):
        raise DamagedShard(f"{path}: its header says {found} {list(shape)}, the cache's layout "
                           f"{np.dtype(dtype) if dtype is not None else found} "
                           f"{[int(rows)] + list(row_shape if row_shape is not None else _row_shape(shape))}")
    expected = offset + int(np.prod(shape, dtype=np.int64)) * found.itemsize
    return offset, found, shape, expected, os.path.getsize(path)


class _Epoch:
    """The memmaps of one epoch folder. `specs`: file -> (dtype, row shape) of every shard but valid and crc.

    Opening checks each shard against its header: a truncated shard (a copy cut short) is extended back to its
    size and the samples whose rows were cut are marked missing (`truncated` lists what was found); a shard
    whose header is damaged raises DamagedShard."""

    def __init__(self, folder, specs, rows):
        self.folder = folder
        self.truncated = []  # (file, bytes on disk, bytes expected, first sample cut)
        intact = rows
        shards = {VALID: (np.uint8, ()), CRC: (np.uint32, ())}
        shards.update(specs)
        for file, (dtype, row_shape) in shards.items():
            path = os.path.join(folder, file + ".npy")
            offset, found, shape, expected, actual = shard_header(path, rows, dtype, row_shape)
            if actual < expected:
                row_bytes = max(int(np.prod(shape[1:], dtype=np.int64)) * found.itemsize, 1)
                first_cut = max(actual - offset, 0) // row_bytes
                self.truncated.append((file, actual, expected, first_cut))
                intact = min(intact, first_cut)
                os.truncate(path, expected)  # back to full size: the cut rows read as zeros until refilled
        self.valid = np.load(os.path.join(folder, VALID + ".npy"), mmap_mode="r+")
        self.crc = np.load(os.path.join(folder, CRC + ".npy"), mmap_mode="r+")
        self.arrays = {f: np.load(os.path.join(folder, f + ".npy"), mmap_mode="r+") for f in specs}
        if intact < rows and self.valid[intact:].any():
            self.valid[intact:] = 0
            self.valid.flush()

    def close(self):
        for array in [self.valid, self.crc] + list(self.arrays.values()):
            mm = getattr(array, "_mmap", None)
            if mm is not None:
                mm.close()
        self.arrays = {}


def row_checksums(raw):
    """One zlib.crc32 per sample over the bytes of its rows in every array of `raw` (a list, in layout order)."""
    count = len(raw[0]) if raw else 0
    out = np.zeros(count, dtype=np.uint32)
    for k in range(count):
        crc = 0
        for array in raw:
            crc = zlib.crc32(np.ascontiguousarray(array[k]).data, crc)
        out[k] = crc
    return out


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
        self.read_samples = self.written_samples = self.damaged_samples = 0
        self.last_damage = None  # the epoch folder and samples of the last entries that failed their checksum

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
            try:
                with writing(os.path.join(self.root, META), "the teacher cache's meta.json"):
                    with open(tmp, "w") as f:
                        json.dump(meta, f, indent=1)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.remove(tmp)
                raise
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
        return total + 1 + 4  # the valid flag and the checksum

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
        free = free_bytes(self.root)
        shapes = ", ".join(f"{n} {t['shape']}" + (f" top-{t['topk']}" if t["topk"] else "")
                           for n, t in self.layout.items())
        self.log(f"teacher cache {self.root}: {shapes} per sample in {self.dtype}, {human(per_sample)} each; this "
                 f"run reads {total} entries over {len(visits)} epoch(s), {cached} already cached: about "
                 f"{human(needed)} to write ({human(free)} free)")
        if needed > free:
            raise ConfigError(
                f"The teacher cache would need about {human(needed)} ({max(total - cached, 0)} entries of "
                f"{human(per_sample)}) but {self.root} has {human(free)} free; nothing was written. Free some "
                f"space, give --teacher_cache a folder on a larger disk, store less (--teacher_cache_dtype "
                f"float16, --teacher_cache_topk K for classification logits), or train fewer epochs.")
        return needed

    # ----- entries -----------------------------------------------------------------------------------
    def shard_specs(self):
        """file -> (dtype, per-sample shape) of each data shard, in layout order (the checksums' order)."""
        specs = OrderedDict()
        for t in self.layout.values():
            if t["topk"]:
                specs[t["file"] + ".values"] = (np.dtype(self.dtype), (t["topk"],))
                specs[t["file"] + ".indices"] = (np.dtype(np.int32), (t["topk"],))
                specs[t["file"] + ".rest"] = (np.dtype(self.dtype), ())
            else:
                specs[t["file"]] = (np.dtype(self.dtype), tuple(t["shape"]))
        return specs

    def _epoch_folder(self, epoch):
        return os.path.join(self.root, f"epoch_{int(epoch):05d}")

    def _epoch(self, epoch, create):
        epoch = int(epoch)
        if epoch in self._epochs:
            return self._epochs[epoch]
        folder = self._epoch_folder(epoch)
        if not os.path.isdir(folder):
            if not create:
                return None
            with self._locked():
                if not os.path.isdir(folder):
                    self._make_epoch(folder)
        for old in list(self._epochs):  # one epoch at a time is open (batches move forward)
            if old != epoch and len(self._epochs) >= 2:
                self._epochs.pop(old).close()
        try:
            ep = _Epoch(folder, self.shard_specs(), self.num_samples)
        except DamagedShard as e:
            raise ConfigError(f"The teacher cache {self.root} has a damaged shard: {e}. Pass {REPAIR_FLAG} to "
                              f"replace it (its entries are refilled by the teacher), or --teacher_cache_rebuild to "
                              f"refill the whole cache.") from None
        for file, actual, expected, first in ep.truncated:
            self.log(f"teacher cache: {folder}/{file}.npy is truncated ({actual} of {expected} bytes): the entries "
                     f"of samples {first} to {self.num_samples - 1} of epoch {epoch} are treated as missing and "
                     f"refilled")
        self._epochs[epoch] = ep
        return ep

    def open_epoch(self, epoch):
        """The memmaps of an epoch folder (`valid`, `crc`, `arrays` by shard), or None when it does not exist."""
        return self._epoch(epoch, create=False)

    def _make_epoch(self, folder):
        """Create an epoch folder whole (every shard at full size, its disk space reserved), then rename it."""
        tmp = f"{folder}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        n = self.num_samples
        shards = [(VALID, np.dtype(np.uint8), ()), (CRC, np.dtype(np.uint32), ())]
        shards += [(file, dtype, shape) for file, (dtype, shape) in self.shard_specs().items()]
        size = sum(n * int(np.prod(shape, dtype=np.int64)) * dtype.itemsize for _, dtype, shape in shards)
        hint = (f"The partial folder was removed; entries already cached are kept. Free some space or give "
                f"--teacher_cache a folder on a larger disk (or store less: --teacher_cache_dtype float16, "
                f"--teacher_cache_topk K).")
        try:
            with writing(folder, f"the teacher cache's {os.path.basename(folder)} shards", size, hint, kind="cache"):
                os.makedirs(tmp)
                for file, dtype, shape in shards:
                    path = os.path.join(tmp, file + ".npy")
                    np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(n,) + tuple(shape)).flush()
                    _reserve(path)
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @staticmethod
    def _by_epoch(keys):
        groups = OrderedDict()
        for pos, (epoch, index) in enumerate(keys):
            groups.setdefault(int(epoch), []).append((pos, int(index)))
        return groups

    def lookup(self, keys, count=True):
        """name -> array (B, *shape) of the samples `keys` [(epoch, index)], or None when one is missing or
        fails its checksum (then marked missing, to be recomputed)."""
        if self.layout is None:
            return None
        groups = self._by_epoch(keys)
        eps = {}
        for epoch, items in groups.items():
            ep = self._epoch(epoch, create=False)
            if ep is None or not ep.valid[[i for _, i in items]].all():
                return None
            eps[epoch] = ep
        files = list(self.shard_specs())
        parts = OrderedDict((name, []) for name in self.layout)
        for epoch, items in groups.items():
            ep = eps[epoch]
            rows = np.array([i for _, i in items])
            raw = [np.asarray(ep.arrays[f][rows]) for f in files]
            bad = rows[row_checksums(raw) != np.asarray(ep.crc[rows])]
            if len(bad):
                self._mark_damaged(epoch, ep, bad)
                return None
            at = 0
            for name, t in self.layout.items():
                width = 3 if t["topk"] else 1
                parts[name].append(self._decode(t, raw[at:at + width]))
                at += width
        out = OrderedDict((n, p[0] if len(p) == 1 else np.concatenate(p)) for n, p in parts.items())
        if len(groups) > 1:  # rows in the batch's order
            order = np.argsort([pos for items in groups.values() for pos, _ in items])
            out = OrderedDict((n, a[order]) for n, a in out.items())
        if count:
            self.read_samples += len(keys)
        return out

    def _mark_damaged(self, epoch, ep, rows):
        rows = sorted(set(int(r) for r in rows))
        ep.valid[rows] = 0
        ep.valid.flush()
        self.damaged_samples += len(rows)
        self.last_damage = f"{ep.folder} (epoch {epoch}, sample(s) {_few(rows)})"
        self.log(f"teacher cache: {len(rows)} entr{'y' if len(rows) == 1 else 'ies'} of {self.last_damage} fail "
                 f"their checksum (damaged on disk): treated as missing, the teacher recomputes and rewrites them")

    @staticmethod
    def _decode(t, raw):
        if not t["topk"]:
            return raw[0]
        values, indices, rest = (np.asarray(raw[0], dtype=np.float32), np.asarray(raw[1], dtype=np.int64),
                                 np.asarray(raw[2], dtype=np.float32))
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
        """Write the rows of the samples `keys` (name -> array (B, ...)) and their checksums, then mark them
        valid."""
        self.check_batch(arrays, len(keys))
        files = list(self.shard_specs())
        for epoch, items in self._by_epoch(keys).items():
            ep = self._epoch(epoch, create=True)
            pos = np.array([p for p, _ in items])
            rows = np.array([i for _, i in items])
            raw = []
            for name, t in self.layout.items():
                raw += self._encode(t, np.asarray(arrays[name])[pos])
            for file, data in zip(files, raw):
                ep.arrays[file][rows] = data
            ep.crc[rows] = row_checksums(raw)
            for array in list(ep.arrays.values()) + [ep.crc]:
                array.flush()
            self._test_kill()
            ep.valid[rows] = 1
            ep.valid.flush()
        self.written_samples += len(keys)

    def _encode(self, t, data):
        """The stored arrays of one tensor's rows: [rows] in the storage dtype, or top-k [values, indices, rest]."""
        if not t["topk"]:
            return [data.astype(self.dtype)]
        k = t["topk"]
        data = data.astype(np.float32)
        indices = np.argpartition(-data, k - 1, axis=1)[:, :k]
        values = np.take_along_axis(data, indices, axis=1)
        others = data.copy()
        np.put_along_axis(others, indices, -np.inf, axis=1)
        top = others.max(axis=1, keepdims=True)
        rest = top[:, 0] + np.log(np.mean(np.exp(others - top), axis=1) * others.shape[1]
                                  / (others.shape[1] - k))
        return [values.astype(self.dtype), indices.astype(np.int32), rest.astype(self.dtype)]

    def _test_kill(self):
        kill_at = os.environ.get("SLIM_TEST_KILL_DURING_CACHE_WRITE")
        self._writes += 1
        if kill_at and int(kill_at) == self._writes:
            os.kill(os.getpid(), signal.SIGKILL)

    def _epoch_numbers(self):
        return sorted(int(n[6:]) for n in os.listdir(self.root) if re.fullmatch(r"epoch_\d+", n))

    def first_entry(self):
        """The tensors of one cached sample (a batch of 1), e.g. to size connectors; None when there is none."""
        if self.layout is None:
            return None
        for epoch in self._epoch_numbers():
            ep = self._epoch(epoch, create=False)
            valid = np.flatnonzero(np.asarray(ep.valid))
            if len(valid):
                return self.lookup([(epoch, int(valid[0]))], count=False)
        return None

    # ----- verification of a whole cache (slim-cache verify, --teacher_cache_repair) ----------------
    @classmethod
    def at(cls, root, log=print):
        """The cache in folder `root` as its meta.json describes it (no fingerprint: for verification)."""
        cache = cls(root, {}, log=log)
        meta = cache._read_meta()
        if meta is None:
            raise ConfigError(f"{root} is not a teacher cache: it has no {META} (give the folder passed as "
                              f"--teacher_cache).")
        try:
            cache.layout = OrderedDict((n, t) for n, t in meta["tensors"])
            cache.num_samples = int(meta["num_samples"])
            cache.dtype = str(meta.get("dtype", "float16"))
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"The teacher cache {root} has an unreadable {META} ({type(e).__name__}: {e}); pass "
                              f"--teacher_cache_rebuild to refill it.") from None
        return cache

    def verify(self, repair=False, chunk=256):
        """Check every entry of every epoch folder against its checksum. Returns a report {epochs, checked,
        damaged: [(folder, [samples])], truncated: [(shard, bytes, expected)], unreadable: [(folder, why)]}.
        Without `repair` nothing is changed. With it, damaged entries are marked missing, truncated shards
        extended (their cut entries missing) and an epoch folder with an unreadable shard deleted, so that the
        teacher refills all of them."""
        report = {"epochs": 0, "checked": 0, "damaged": [], "truncated": [], "unreadable": []}
        specs = self.shard_specs()
        for epoch in self._epoch_numbers():
            folder = self._epoch_folder(epoch)
            report["epochs"] += 1
            try:
                shards, cut = self._read_only_shards(folder, specs, report)
            except DamagedShard as e:
                report["unreadable"].append((folder, str(e)))
                if repair:
                    self._epochs.pop(epoch, None)
                    with self._locked():
                        shutil.rmtree(folder, ignore_errors=True)
                continue
            valid = np.flatnonzero(shards[VALID][:cut[VALID]] == 1)
            damaged = [int(i) for i in valid if any(i >= cut[f] for f in specs) or i >= cut[CRC]]
            whole = np.array([i for i in valid if all(i < cut[f] for f in specs) and i < cut[CRC]], dtype=np.int64)
            for start in range(0, len(whole), chunk):
                rows = whole[start:start + chunk]
                crc = row_checksums([np.asarray(shards[f][rows]) for f in specs])
                damaged += [int(r) for r in rows[crc != np.asarray(shards[CRC][rows])]]
            report["checked"] += len(valid)
            if damaged:
                report["damaged"].append((folder, sorted(damaged)))
            del shards
            if repair and (damaged or any(c < self.num_samples for c in cut.values())):
                ep = self._epoch(epoch, create=False)  # extends truncated shards, marks their cut rows missing
                if damaged:
                    ep.valid[damaged] = 0
                    ep.valid.flush()
        return report

    def _read_only_shards(self, folder, specs, report):
        """({shard: read-only memmap of the rows on disk}, {shard: rows on disk}) of one epoch folder."""
        shards, cut = {}, {}
        every = OrderedDict([(VALID, (np.dtype(np.uint8), ())), (CRC, (np.dtype(np.uint32), ()))])
        every.update(specs)
        for file, (dtype, row_shape) in every.items():
            path = os.path.join(folder, file + ".npy")
            if not os.path.isfile(path):
                raise DamagedShard(f"{path} is missing")
            offset, found, shape, expected, actual = shard_header(path, self.num_samples, dtype, row_shape)
            row_bytes = max(int(np.prod(row_shape, dtype=np.int64)) * found.itemsize, 1)
            rows = min(self.num_samples, max(actual - offset, 0) // row_bytes)
            if actual < expected:
                report["truncated"].append((path, actual, expected))
            cut[file] = rows
            shards[file] = (np.memmap(path, dtype=found, mode="r", offset=offset, shape=(rows,) + tuple(row_shape))
                            if rows else np.zeros((0,) + tuple(row_shape), dtype=found))
        return shards, cut

    def repair(self):
        """--teacher_cache_repair: verify the whole cache, mark what is damaged for refilling, log it."""
        report = self.verify(repair=True)
        for line in describe_report(self.root, report, repaired=True):
            self.log(line)
        return report

    def close(self):
        for ep in self._epochs.values():
            ep.close()
        self._epochs = {}


def _few(items, limit=8):
    items = list(items)
    return ", ".join(map(str, items[:limit])) + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def _reserve(path):
    """Allocate a file's blocks now: writing through a memory map into a sparse file on a full disk kills the
    process (SIGBUS); reserving them turns a full disk into an ENOSPC error here."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.path.getsize(path))
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    finally:
        os.close(fd)


def describe_report(root, report, repaired=False):
    """Lines for a verify() report: what was checked, and each damaged, truncated or unreadable part."""
    damaged = sum(len(rows) for _, rows in report["damaged"])
    action = "marked missing: the next run's teacher refills them" if repaired else \
        "pass --repair here (or --teacher_cache_repair to the training command) to refill them"
    lines = [f"teacher cache {root}: {report['epochs']} epoch folder(s), {report['checked']} cached entries checked, "
             f"{damaged} damaged, {len(report['truncated'])} truncated shard(s), {len(report['unreadable'])} "
             f"unreadable epoch folder(s)"]
    for path, actual, expected in report["truncated"]:
        lines.append(f"  truncated: {path} ({actual} of {expected} bytes)")
    for folder, rows in report["damaged"]:
        lines.append(f"  damaged entries in {folder}: sample(s) {_few(rows)}")
    for folder, why in report["unreadable"]:
        lines.append(f"  unreadable: {why}" + (f" ({folder} deleted, its entries to be refilled)" if repaired else ""))
    if damaged or report["truncated"] or report["unreadable"]:
        lines.append(f"  {action}")
    return lines


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
