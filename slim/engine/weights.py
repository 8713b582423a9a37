"""Weights named in configs: a local file or a URL, loaded whole or by name and shape, always reported.

A URL is fetched once by the library that names it (PaddleSeg's, PaddleDetection's or Paddle's own
download utilities, handed in by the task), into that library's cache under the user's home, and read from
the cache by every later run. The engine only decides *when*: it checks the cache first, gives a host that
does not answer one clear error within seconds (naming the key, the URL and the two fixes), and under
`paddle.distributed.launch` lets one process per node download while the others wait for the file.

Every load logs "loaded N/M tensors into <Model>" and what it skipped, so a model that silently starts
from scratch cannot happen.
"""
import os
import re
import time
import urllib.error
import urllib.request

from slim.distill.errors import ConfigError

PROBE_TIMEOUT_S = 15
WAIT_FOR_PEER_S = 3600
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class WeightsUnavailableError(ConfigError):
    """Weights named by URL could not be fetched (offline, unreachable host, HTTP error)."""


def is_url(value):
    return isinstance(value, str) and bool(_URL_RE.match(value))


def _fixes(key):
    return (f"Download the file on a machine that has the internet and put its local path in the same key "
            f"(`{key}: /path/to/file`, or -o {key}=/path/to/file), or set it to null (-o {key}=null) to "
            f"start from scratch.")


def probe(url, key, timeout=PROBE_TIMEOUT_S):
    """Fail fast, with a clear message, when the host does not answer or does not have the file."""
    if not url.lower().startswith(("http://", "https://")):
        return  # other schemes (ppdet://) are resolved by the library itself
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return
    except urllib.error.HTTPError as e:
        if e.code in (403, 405, 501):  # some hosts refuse HEAD but serve GET
            return
        reason = f"the server answered HTTP {e.code} ({e.reason})"
    except (urllib.error.URLError, OSError) as e:
        reason = f"the host could not be reached ({getattr(e, 'reason', e)})"
    raise WeightsUnavailableError(f"{key} = {url}: cannot download the weights: {reason}. {_fixes(key)}")


def _local_rank():
    return int(os.environ.get("PADDLE_RANK_IN_NODE", os.environ.get("PADDLE_LOCAL_RANK", "0")) or 0)


def _several_processes():
    return int(os.environ.get("PADDLE_TRAINERS_NUM", "1")) > 1


def fetch(url, key, cached, download, log=print):
    """The local path of the weights at `url`.

    cached(url)   -> the path in the library's cache when it is there, else None (no network)
    download(url) -> the path after the library downloaded it into its cache
    """
    hit = cached(url)
    if hit:
        log(f"{key}: {url} is in the cache ({hit}); not downloading it again")
        return hit
    if _several_processes() and _local_rank() != 0:
        return _wait_for_peer(url, key, cached, log)
    probe(url, key)
    log(f"{key}: downloading {url}")
    try:
        path = download(url)
    except Exception as e:  # the libraries raise RuntimeError, requests' errors, tarfile errors, ...
        raise WeightsUnavailableError(f"{key} = {url}: the download failed ({type(e).__name__}: {e}). "
                                      f"{_fixes(key)}") from None
    if not path or not os.path.isfile(path):
        raise WeightsUnavailableError(f"{key} = {url}: downloaded, but no weights file came out of it (expected "
                                      f"a .pdparams file, or a .tar.gz/.zip archive holding model.pdparams). "
                                      f"{_fixes(key)}")
    log(f"{key}: saved to {path} (later runs read it from there)")
    return path


def _wait_for_peer(url, key, cached, log):
    """Another process of this node downloads; wait for the file (launch stops everyone if it fails)."""
    log(f"{key}: waiting for the first process of this node to download {url}")
    deadline = time.time() + WAIT_FOR_PEER_S
    while time.time() < deadline:
        hit = cached(url)
        if hit:
            return hit
        time.sleep(1.0)
    raise WeightsUnavailableError(f"{key} = {url}: the first process of this node did not finish downloading "
                                  f"within {WAIT_FOR_PEER_S} s. {_fixes(key)}")


def _few(items, n=5):
    items = list(items)
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")


def describe_load(model, loaded, total, what, skipped=()):
    line = f"{what}: loaded {loaded}/{total} tensors into {type(model).__name__}"
    if skipped:
        line += "; skipped: " + "; ".join(skipped)
    return line


def load_matching(model, state, what, log=print, match=None):
    """Load the tensors of `state` whose name and shape fit `model` (PaddleSeg's and ppdet's pretrained
    loading); log N/M and what was skipped. `match(model_state, state)` may map the file's names to the
    model's first (ppdet matches backbone files by suffix). No tensor fitting is an error."""
    own = model.state_dict()
    if match is not None:
        state = match(own, state)
    fit, wrong = {}, []
    for name, value in state.items():
        if name in own and hasattr(value, "shape"):
            if list(value.shape) == list(own[name].shape):
                fit[name] = value
            else:
                wrong.append(f"{name} (file {list(value.shape)}, model {list(own[name].shape)})")
    if not fit:
        raise ConfigError(f"{what}: no tensor of the file matches {type(model).__name__} by name and shape "
                          f"(file: {_few(state)}; model: {_few(own)}). Check that the weights are for this "
                          f"model.")
    skipped = []
    not_in_file = [k for k in own if k not in state]
    if not_in_file:
        skipped.append(f"{len(not_in_file)} not in the file ({_few(not_in_file)})")
    if wrong:
        skipped.append(f"{len(wrong)} of another shape ({_few(wrong)})")
    unused = [k for k in state if k not in own]
    if unused:
        skipped.append(f"{len(unused)} of the file not in the model ({_few(unused)})")
    own.update(fit)
    model.set_state_dict(own)  # the whole dict: Paddle warns about every key a partial dict leaves out
    log(describe_load(model, len(fit), len(own), what, skipped))
    return len(fit), len(own)
