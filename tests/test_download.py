"""The CINIC-10 downloader, against a small archive served on loopback (no internet needed)."""
import http.server
import io
import os
import tarfile
import threading

import numpy as np
import pytest

from ece662 import download
from ece662.data_utils import CLASSES


def _archive_bytes(extra=None, drop=None):
    """A gzip tar in the CINIC-10 layout: 2 tiny PNGs per class per split."""
    from PIL import Image
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for split in ("train", "valid", "test"):
            for cls in CLASSES:
                if drop == f"{split}/{cls}":
                    continue
                for i in range(2):
                    png = io.BytesIO()
                    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(png, "PNG")
                    info = tarfile.TarInfo(f"{split}/{cls}/cifar10-{split}-{i}.png")
                    info.size = png.tell()
                    png.seek(0)
                    tar.addfile(info, png)
        if extra:
            info = tarfile.TarInfo(extra)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    return buf.getvalue()


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    payload = b""

    def do_GET(self):
        data = self.payload
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
            body = data[start:]
        else:
            self.send_response(200)
            body = data
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()


def test_download_unpack_and_cache(server, tmp_path, monkeypatch):
    """main() fetches, checks, unpacks into cinic-10/ and builds the cache."""
    monkeypatch.setenv("ECE662_CACHE", str(tmp_path / "cache"))
    _RangeHandler.payload = _archive_bytes()
    url = f"http://127.0.0.1:{server.server_port}/CINIC-10.tar.gz"
    assert download.main(["--dest", str(tmp_path), "--url", url]) == 0
    assert sorted(os.listdir(tmp_path / "cinic-10")) == ["test", "train", "valid"]
    assert len(os.listdir(tmp_path / "cinic-10" / "valid" / "frog")) == 2
    assert os.listdir(tmp_path / "cache")


def test_interrupted_download_resumes(server, tmp_path):
    """With half the archive already on disk, only the rest is fetched and the result is whole."""
    payload = _archive_bytes()
    _RangeHandler.payload = payload
    path = str(tmp_path / "a.tar.gz")
    with open(path + ".part", "wb") as f:
        f.write(payload[: len(payload) // 2])
    download.fetch(f"http://127.0.0.1:{server.server_port}/a", path, progress=False)
    assert open(path, "rb").read() == payload


def test_offline_gives_a_clear_message(tmp_path):
    """A server that cannot be reached is reported as being offline, with what to do instead."""
    with pytest.raises(download.DownloadError, match="offline"):
        download.fetch("http://127.0.0.1:9/CINIC-10.tar.gz", str(tmp_path / "a.tar.gz"), timeout=5)


@pytest.mark.parametrize("kwargs, match", [(dict(extra="../evil.txt"), "unsafe"),
                                           (dict(drop="valid/ship"), "valid/ship"),
                                           (dict(extra="other/readme.txt"), "unexpected member")])
def test_bad_archives_are_refused_and_leave_nothing(tmp_path, kwargs, match):
    """Unsafe paths, missing class folders and foreign content are refused before unpacking."""
    path = tmp_path / "a.tar.gz"
    path.write_bytes(_archive_bytes(**kwargs))
    with pytest.raises(download.DownloadError, match=match):
        download.unpack(str(path), str(tmp_path / "cinic-10"))
    assert not (tmp_path / "cinic-10").exists()


def test_truncated_archive_is_refused(tmp_path):
    """A cut-off archive says it is unreadable and to download again."""
    path = tmp_path / "a.tar.gz"
    path.write_bytes(_archive_bytes()[:3000])
    with pytest.raises(download.DownloadError, match="download again"):
        download.check_archive(str(path))


def test_shell_script_does_the_same(server, tmp_path):
    """datasets/get_datasets.sh downloads with curl, unpacks and caches, like the Python twin."""
    import shutil
    import subprocess
    import sys
    if shutil.which("curl") is None:
        pytest.fail("curl is needed by datasets/get_datasets.sh; install it (apt-get install curl)")
    _RangeHandler.payload = _archive_bytes()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, CINIC10_URL=f"http://127.0.0.1:{server.server_port}/c.tar.gz",
               CINIC10_DEST=str(tmp_path / "d"), ECE662_CACHE=str(tmp_path / "cache"),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    r = subprocess.run(["bash", os.path.join(root, "datasets", "get_datasets.sh")], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "cached: train 20, val 20, test 20" in r.stdout
    assert sorted(os.listdir(tmp_path / "d" / "cinic-10")) == ["test", "train", "valid"]
