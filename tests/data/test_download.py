"""The CINIC-10 downloader, against a small archive served on loopback (no internet needed)."""
import functools
import http.server
import io
import os
import tarfile
import threading

import numpy as np
import pytest

from ece662.data import download
from ece662.data_utils import CLASSES
from helpers import REPO


@functools.lru_cache(maxsize=None)
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
    root = REPO
    env = dict(os.environ, CINIC10_URL=f"http://127.0.0.1:{server.server_port}/c.tar.gz",
               CINIC10_DEST=str(tmp_path / "d"), ECE662_CACHE=str(tmp_path / "cache"),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    r = subprocess.run(["bash", os.path.join(root, "datasets", "get_datasets.sh")], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "cached: train 20, val 20, test 20" in r.stdout
    assert sorted(os.listdir(tmp_path / "d" / "cinic-10")) == ["test", "train", "valid"]


# ---------------------------------------------------------------------------- hostile archives
def _member(name, kind="file", size=1, link=""):
    """A TarInfo of the given kind ('file', 'dir', 'sym', 'hard', 'chr', 'blk', 'fifo')."""
    info = tarfile.TarInfo(name)
    info.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE,
                 "hard": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE,
                 "fifo": tarfile.FIFOTYPE}[kind]
    info.size = size if kind == "file" else 0
    info.linkname = link
    return info


def _hostile_archive(members, before=False):
    """The valid CINIC-10 layout with ``members`` (TarInfo list) added after (or before) it."""
    import gzip
    valid = tarfile.open(fileobj=io.BytesIO(_archive_bytes()), mode="r:gz")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        def add_hostile():
            for m in members:
                tar.addfile(m, io.BytesIO(b"\0" * m.size) if m.isreg() else None)
        if before:
            add_hostile()
        for m in valid.getmembers():
            tar.addfile(m, valid.extractfile(m))
        if not before:
            add_hostile()
    assert gzip.decompress(buf.getvalue())      # a well-formed archive: only its members are hostile
    return buf.getvalue()


# Each of these must be refused before anything is written (23 escapes known to be refused, plus
# links, devices, collisions and sizes).
HOSTILE = {
    "parent": [_member("../evil.txt")],
    "parent-deep": [_member("train/cat/../../../evil.png")],
    "parent-dot-slash": [_member("./../evil.txt")],
    "parent-only": [_member("..", "dir")],
    "absolute": [_member("/tmp/evil.png")],
    "absolute-under-split": [_member("/train/cat/evil.png")],
    "windows-drive": [_member("C:/evil.png")],
    "windows-drive-relative": [_member("train/C:evil.png")],
    "backslash-parent": [_member("train\\..\\..\\evil.png")],
    "control-char": [_member("train/cat/evil\n.png")],
    "empty-component": [_member("train//cat/x.png")],
    "dot-component": [_member("train/./cat/x.png")],
    "symlink-out": [_member("train/cat/link.png", "sym", link="/etc/passwd")],
    "symlink-relative-out": [_member("train/cat/link.png", "sym", link="../../../../etc/passwd")],
    "symlink-inside": [_member("train/cat/link.png", "sym", link="cifar10-train-0.png")],
    "symlink-dir-then-write": [_member("train/esc", "sym", link="/tmp"), _member("train/esc/evil.png")],
    "hardlink-out": [_member("train/cat/hard.png", "hard", link="/etc/passwd")],
    "hardlink-inside": [_member("train/cat/hard.png", "hard", link="train/cat/cifar10-train-0.png")],
    "char-device": [_member("train/cat/dev.png", "chr")],
    "block-device": [_member("train/cat/dev.png", "blk")],
    "fifo": [_member("train/cat/fifo.png", "fifo")],
    "file-over-dir": [_member("train/cat")],
    "file-over-dir-first": [_member("train/cat/x.png/y.png"), _member("train/cat/x.png")],
    "file-then-dir": [_member("train/cat/new.png"), _member("train/cat/new.png", "dir")],
    "file-as-parent": [_member("train/cat/a.png"), _member("train/cat/a.png/b.png")],
    "file-as-split": [_member("test")],
    "duplicate-file": [_member("train/cat/cifar10-train-0.png")],
    "case-duplicate": [_member("train/cat/CIFAR10-TRAIN-0.png")],
    "case-file-over-dir": [_member("train/CAT")],
    "member-too-big": [_member("train/cat/huge.png", size=(1 << 20) + 1)],
    "outside-layout": [_member("other/readme.txt")],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archives_are_refused_and_leave_nothing(tmp_path, case):
    """Links, devices, escaping paths, a file over a folder (either order), duplicates and oversized
    members are refused with a DownloadError naming the member, and nothing is unpacked."""
    path = tmp_path / "a.tar.gz"
    path.write_bytes(_hostile_archive(HOSTILE[case]))
    with pytest.raises(download.DownloadError, match=r"refusing|unexpected member") as err:
        download.unpack(str(path), str(tmp_path / "cinic-10"))
    assert str(path) in str(err.value)
    assert sorted(os.listdir(tmp_path)) == ["a.tar.gz"]


def test_hostile_member_first_is_refused_too(tmp_path):
    """A collision is caught whichever member comes first (file before the folder it would hide)."""
    path = tmp_path / "a.tar.gz"
    path.write_bytes(_hostile_archive([_member("valid/frog")], before=True))
    with pytest.raises(download.DownloadError, match="valid/frog"):
        download.unpack(str(path), str(tmp_path / "cinic-10"))


def test_archive_root_folder_and_top_level_files_are_fine(tmp_path):
    """'./' members, a './' root entry and a top-level README are what real tars hold: accepted."""
    path = tmp_path / "a.tar.gz"
    path.write_bytes(_hostile_archive([_member(".", "dir"), _member("./README.md", size=10)], before=True))
    download.unpack(str(path), str(tmp_path / "cinic-10"))
    assert sorted(os.listdir(tmp_path / "cinic-10")) == ["README.md", "test", "train", "valid"]


def test_unpack_refuses_an_existing_destination(tmp_path):
    """A file (or folder) already at the destination is reported, not overwritten or crashed on."""
    path = tmp_path / "a.tar.gz"
    path.write_bytes(_archive_bytes())
    (tmp_path / "cinic-10").write_text("mine")
    with pytest.raises(download.DownloadError, match="already exists"):
        download.unpack(str(path), str(tmp_path / "cinic-10"))
    assert (tmp_path / "cinic-10").read_text() == "mine"


def _run_script(tmp_path, env_extra=None):
    import subprocess
    import sys
    root = REPO
    env = dict(os.environ, CINIC10_URL="http://127.0.0.1:9/unreachable.tar.gz",
               CINIC10_DEST=str(tmp_path / "d"), ECE662_CACHE=str(tmp_path / "cache"),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"], **(env_extra or {}))
    return subprocess.run(["bash", os.path.join(root, "datasets", "get_datasets.sh")], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("case", ["file-over-dir", "symlink-out", "parent", "truncated"])
def test_shell_script_refuses_an_archive_in_one_line(tmp_path, case):
    """get_datasets.sh with a hostile or broken archive: exit 1, one line on stderr, no traceback."""
    (tmp_path / "d").mkdir()
    data = _archive_bytes()[:3000] if case == "truncated" else _hostile_archive(HOSTILE[case])
    (tmp_path / "d" / "CINIC-10.tar.gz").write_bytes(data)
    r = _run_script(tmp_path)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr + r.stdout
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("get_datasets: "), lines
    assert not (tmp_path / "d" / "cinic-10").exists()


def test_main_reports_an_unwritable_destination_in_one_line(tmp_path, capsys):
    """--dest under a regular file: one line and exit 1, no traceback."""
    (tmp_path / "f").write_text("x")
    assert download.main(["--dest", str(tmp_path / "f" / "d"), "--url", "http://127.0.0.1:9/x"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("get_datasets: ")


# ---------------------------------------------------------------------------- header bombs
@functools.lru_cache(maxsize=None)
def _gzip_of_zeros(n):
    """A gzip member that inflates to ``n`` zero bytes (about n / 1000 bytes long)."""
    import zlib
    z, zeros, parts = zlib.compressobj(9, zlib.DEFLATED, 31), bytes(1 << 22), []
    for _ in range(n // len(zeros)):
        parts.append(z.compress(zeros))
    parts.append(z.compress(bytes(n % len(zeros))))
    parts.append(z.flush())
    return b"".join(parts)


def _header_bomb(path, kind, declared=1_100_000_000):
    """A .tar.gz of about 1 MB whose first header announces ``declared`` bytes of header data:
    a GNU long name ('L') or link ('K'), a pax header ('x'), a GNU sparse member ('S'), or a pax
    sparse 1.0 member whose map runs on for ``declared`` bytes.  gzip allows several members in
    one file, so the header is one gzip member and the zeros (or map lines) another."""
    import gzip
    if kind == "pax sparse map":
        pax = tarfile.TarInfo("train/cat/x.png")
        pax.size = 1
        pax.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                           "GNU.sparse.name": "train/cat/x.png", "GNU.sparse.realsize": "1"}
        head = pax.tobuf(tarfile.PAX_FORMAT)[:-512]       # the pax header, without the member's own
        member = tarfile.TarInfo("train/cat/x.png")
        member.size = declared
        head += member.tobuf(tarfile.USTAR_FORMAT) + b"999999999999\n"   # the map: 10^12 fields
        import zlib
        z = zlib.compressobj(9, zlib.DEFLATED, 31)
        lines = b"0\n" * (1 << 21)
        body = b"".join([z.compress(lines) for _ in range(declared // len(lines))] + [z.flush()])
        path.write_bytes(gzip.compress(head) + body)
        return str(path)
    info = tarfile.TarInfo({"L": "././@LongLink", "K": "././@LongLink", "x": "././@PaxHeader",
                            "S": "train/cat/sparse.png"}[kind])
    info.type = kind.encode()
    info.size = declared
    path.write_bytes(gzip.compress(info.tobuf(tarfile.GNU_FORMAT)) + _gzip_of_zeros(declared))
    return str(path)


HEADER_BOMBS = {"L": r"refusing a GNU long name of 1,100,000,000 bytes",
                "K": r"refusing a GNU long link of 1,100,000,000 bytes",
                "x": r"refusing a pax header of 1,100,000,000 bytes",
                "S": r"refusing the GNU sparse member 'train/cat/sparse.png'",
                "pax sparse map": r"refusing the pax sparse member"}

HEADER_CHILD = """
import json, resource, sys
from ece662.data import download
vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.RLIM_INFINITY))   # 1 GiB more
out = {}
for name, (path, dest) in json.loads(sys.argv[1]).items():
    for step, call in (("check", lambda: download.check_archive(path)),
                       ("unpack", lambda: download.unpack(path, dest))):
        try:
            call()
            out[name + " " + step] = ["ok", ""]
        except BaseException as e:
            out[name + " " + step] = [type(e).__name__, str(e)]
print(json.dumps(out))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="RLIMIT_AS and /proc are Linux's")
def test_archive_headers_that_ask_for_gigabytes_are_refused_under_a_memory_limit(tmp_path):
    """A 1 MB .tar.gz whose GNU long name, long link or pax header declares 1.1 GB, or whose sparse
    map runs on for a gigabyte: check_archive and unpack refuse each with one DownloadError naming
    the file, in a child process that may use only 1 GiB more than it started with."""
    import json
    import re
    import subprocess
    import sys
    files = {}
    for i, kind in enumerate(HEADER_BOMBS):
        path = _header_bomb(tmp_path / f"bomb{i}.tar.gz", kind)
        assert os.path.getsize(path) < 2_000_000, kind
        files[kind] = (path, str(tmp_path / f"out{i}"))
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-c", HEADER_CHILD, json.dumps(files)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, f"the child crashed (rc {proc.returncode}): {proc.stderr[-2000:]}"
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for kind, message in HEADER_BOMBS.items():
        path, dest = files[kind]
        for step in ("check", "unpack"):
            got, text = results[f"{kind} {step}"]
            assert got == "DownloadError", f"{kind} {step}: {got}: {text[:300]}"
            assert text.startswith(path + ": ") and re.search(message, text), f"{kind} {step}: {text}"
        assert not os.path.exists(dest) and not os.path.exists(dest + ".unpacking")


def test_archive_with_too_many_members_is_refused(tmp_path, monkeypatch):
    """More members than CINIC-10 could hold is refused while reading, naming the file."""
    monkeypatch.setattr(download, "MAX_MEMBERS", 50)
    path = tmp_path / "a.tar.gz"
    path.write_bytes(_archive_bytes())          # 60 PNGs
    with pytest.raises(download.DownloadError, match=f"{path}: more than 50 members"):
        download.check_archive(str(path))


def test_archive_long_names_within_the_bound_are_read(tmp_path):
    """GNU long names and pax headers of ordinary size still work (CINIC-10 could use either)."""
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        valid = tarfile.open(fileobj=io.BytesIO(_archive_bytes()), mode="r:gz")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz", format=fmt) as tar:
            for m in valid.getmembers():
                tar.addfile(m, valid.extractfile(m))
            long = _member("train/cat/" + "x" * 300 + ".png")
            tar.addfile(long, io.BytesIO(b"\0"))
        path = tmp_path / f"long{fmt}.tar.gz"
        path.write_bytes(buf.getvalue())
        names = [m.name for m in download.check_archive(str(path))]
        assert "train/cat/" + "x" * 300 + ".png" in names
