"""Writing to disk safely: file digests, free space, and a full disk said in one line.

    with writing(path, "checkpoint iter_10 (model.pdparams)", size=nbytes):
        paddle.save(state, path)          # ENOSPC here -> DiskFullError, one line, exit status 2

    ensure_space(folder, nbytes, "checkpoint iter_10", hint="...")   # refuse before writing anything

A full disk (ENOSPC) or an exhausted quota (EDQUOT) while a run writes its checkpoints, teacher-cache shards,
exports, history or logs becomes a DiskFullError naming the path, what was being written, its size and the
free space; the caller removes its partial output. Command-line tools print it and exit with status 2.

`sha256_of(path)` is the digest of checkpoint manifests (checkpoint.py): bench/integrity.py measured sha256 at
1.6 GB/s and blake2b at 0.6 GB/s on this project's 2-core machine, and sha256 needs no extra package.

Test hooks (environment variables, for the tests; never set them otherwise):
    SLIM_TEST_ENOSPC=KIND:N   the N-th write of KIND (checkpoint, cache, export, history, vdl, log) in this
                              process fails with ENOSPC, as a disk that fills up would
    SLIM_TEST_FREE_BYTES=N    free_bytes() says N (a disk that is nearly full, or one with room to spare)
"""
import contextlib
import errno
import hashlib
import os
import shutil

from slim.distill.errors import SlimError

_CHUNK = 1 << 20
FULL_ERRNOS = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


class DiskFullError(SlimError, OSError):
    """The disk (or quota) ran out while writing, or would have: the message names what, where and sizes."""


def human(nbytes):
    """1536 -> '1.5 KB'."""
    nbytes = float(nbytes)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(nbytes) < 1024 or unit == "TB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024.0
    return f"{nbytes:.1f} TB"


def free_bytes(path):
    """Free bytes on the filesystem holding `path` (or its nearest existing parent)."""
    fake = os.environ.get("SLIM_TEST_FREE_BYTES")  # tests: a disk that is nearly full
    if fake:
        return int(fake)
    probe = os.path.abspath(path)
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    return shutil.disk_usage(probe).free


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def is_disk_full(error):
    return isinstance(error, OSError) and error.errno in FULL_ERRNOS


def _message(path, what, size, hint):
    size_text = f" ({human(size)})" if size else ""
    try:
        free = human(free_bytes(path))
    except OSError:
        free = "unknown"
    return (f"No space left on the device while writing {what}{size_text} to {path}: {free} free. "
            + (hint or "Free some space or write to a larger disk, then run the command again."))


def disk_full(path, what, size=None, hint=None):
    return DiskFullError(errno.ENOSPC, _message(path, what, size, hint))


def ensure_space(path, size, what, hint=None):
    """Refuse (DiskFullError) before writing `size` bytes of `what` at `path` when the disk lacks them."""
    try:
        free = free_bytes(path)
    except OSError:
        return
    if size > free:
        raise DiskFullError(errno.ENOSPC, f"{what} needs about {human(size)} but {path} has {human(free)} free; "
                            f"nothing was written. " + (hint or "Free some space or write to a larger disk."))


_FAULT_COUNTS = {}


def fault_point(kind):
    """SLIM_TEST_ENOSPC=KIND:N (module docstring): raise ENOSPC at the N-th write of `kind`."""
    spec = os.environ.get("SLIM_TEST_ENOSPC")
    if not spec:
        return
    want, _, nth = spec.partition(":")
    if want != kind:
        return
    _FAULT_COUNTS[kind] = _FAULT_COUNTS.get(kind, 0) + 1
    if _FAULT_COUNTS[kind] == int(nth or 1):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@contextlib.contextmanager
def writing(path, what, size=None, hint=None, kind=None):
    """Turn ENOSPC/EDQUOT raised inside the block into a DiskFullError naming `what`, `path`, its size and
    the free space (the caller cleans up its partial output). `kind`: the SLIM_TEST_ENOSPC fault point."""
    try:
        if kind:
            fault_point(kind)
        yield
    except DiskFullError:
        raise
    except OSError as e:
        if not is_disk_full(e):
            raise
        raise disk_full(path, what, size, hint) from None
