"""Weights served over HTTP from a temporary folder on 127.0.0.1 (no internet), counting the requests,
and the libraries' weight caches pointed at a temporary home."""
import contextlib
import functools
import http.server
import os
import socket
import tarfile
import threading

import paddle


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        self.server.requests.append(("GET", self.path))
        super().do_GET()

    def do_HEAD(self):
        self.server.requests.append(("HEAD", self.path))
        super().do_HEAD()


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):  # clients that read the headers only and hang up
        pass


class WeightsServer:
    def __init__(self, folder):
        self.folder = folder
        self.httpd = _Server(("127.0.0.1", 0),
                                                     functools.partial(_Handler, directory=folder))
        self.httpd.requests = []
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, name):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def gets(self, name):
        """How many times the file was downloaded (GET requests)."""
        return sum(1 for method, path in self.httpd.requests if method == "GET" and path == f"/{name}")


@contextlib.contextmanager
def serve(folder):
    server = WeightsServer(folder)
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


def closed_port_url(name="w.pdparams"):
    """A URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{name}"


def save_pdparams(state, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    paddle.save(state, path)
    return path


def save_archive(state, path, folder):
    """A .tar.gz holding folder/model.pdparams, as PaddleSeg publishes its backbone weights."""
    tmp = os.path.join(os.path.dirname(path), f".{folder}")
    save_pdparams(state, os.path.join(tmp, "model.pdparams"))
    with tarfile.open(path, "w:gz") as tar:
        tar.add(tmp, arcname=folder)
    return path


def cache_env(home):
    """Environment variables that put every library's weights cache under `home`."""
    return {"HOME": str(home), "SEG_HOME": os.path.join(str(home), ".paddleseg")}


def point_caches_at(monkeypatch, home):
    """The same for this process: the libraries read their cache folders when imported."""
    import paddle.utils.download as paddle_download
    from paddleseg.utils.env import seg_env

    from slim.tasks.det.compat import import_ppdet
    import_ppdet()
    import ppdet.utils.download as ppdet_download
    monkeypatch.setattr(seg_env, "PRETRAINED_MODEL_HOME", os.path.join(str(home), ".paddleseg", "pretrained_model"))
    monkeypatch.setattr(ppdet_download, "WEIGHTS_HOME", os.path.join(str(home), ".cache", "paddle", "weights"))
    monkeypatch.setattr(paddle_download, "WEIGHTS_HOME", os.path.join(str(home), ".cache", "paddle", "hapi", "weights"))
