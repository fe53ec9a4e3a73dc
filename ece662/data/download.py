"""Download the official CINIC-10 archive, check it, unpack it, and build the uint8 cache.

    python -m ece662.data.download [--dest datasets] [--url URL]
    bash datasets/get_datasets.sh            # the same, downloading with curl

The archive (about 700 MB) is fetched into ``<dest>/CINIC-10.tar.gz`` with HTTP range
requests, so an interrupted download resumes where it stopped.  It is then checked (a
readable gzip tar whose members all lie under train/, valid/ or test/ with the ten class
folders: no links, devices, absolute paths or ``..``, nothing landing on or inside another
member; see :func:`check_archive`) and unpacked into ``<dest>/cinic-10/``; finally
the PNGs are decoded once into the cache (``ece662.data.tree``).  Offline, it stops with a
message saying so and what to do instead.  Every refusal is one line on stderr and exit
status 1, never a traceback.
"""
import argparse
import os
import re
import sys
import tarfile
import urllib.error
import urllib.request
import zlib

from ece662.data.images import CLASSES
from ece662.data.tree import read_tree

URL = "https://datashare.ed.ac.uk/bitstream/handle/10283/3192/CINIC-10.tar.gz"
SPLITS = ("train", "valid", "test")


class DownloadError(RuntimeError):
    """The archive could not be fetched or is not a CINIC-10 archive."""


def fetch(url, path, chunk=1 << 20, progress=True, timeout=60):
    """Download ``url`` to ``path``, resuming a partial ``path + '.part'``; returns ``path``."""
    part = path + ".part"
    have = os.path.getsize(part) if os.path.exists(part) else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:          # the part file is already complete
            os.replace(part, path)
            return path
        raise DownloadError(f"the server refused {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(
            f"cannot reach {url} ({getattr(e, 'reason', e)}). This machine seems to be offline. "
            f"Download the archive elsewhere and put it at {path}, or point ECE662_DATA at a "
            f"CINIC-10 folder or .npz you already have") from None
    with resp:
        resumed = have and resp.status == 206
        total = resp.headers.get("Content-Length")
        total = int(total) + (have if resumed else 0) if total else None
        from tqdm.auto import tqdm
        with open(part, "ab" if resumed else "wb") as f, tqdm(
                total=total, initial=have if resumed else 0, unit="B", unit_scale=True,
                desc="CINIC-10.tar.gz", disable=not progress) as bar:
            while True:
                block = resp.read(chunk)
                if not block:
                    break
                f.write(block)
                bar.update(len(block))
    if total is not None and os.path.getsize(part) != total:
        raise DownloadError(f"the download stopped at {os.path.getsize(part)} of {total} bytes; "
                            f"run the same command again to resume")
    os.replace(part, path)
    return path


# A CINIC-10 PNG is about 2.5 KB and the whole archive unpacks to about 700 MB: members or totals far
# above that are not CINIC-10, and are refused before anything is written.
MAX_MEMBER_BYTES = 1 << 20
MAX_TOP_LEVEL_FILE_BYTES = 100 << 20
MAX_TOTAL_BYTES = 4 << 30
# tarfile reads a header member (a GNU long name or link, a pax header) whole into memory before
# handing back the member it describes, and keeps one TarInfo (about 1 kB) per member: both are
# bounded while the archive is read, since 1 MB of gzip inflates to a gigabyte of either.
MAX_HEADER_BYTES = 64 << 10
MAX_MEMBERS = 400_000           # CINIC-10 holds 270,000 PNGs and 33 folders


class _RefusedHeader(tarfile.TarError):
    """A member header that reading further would make tarfile hold in memory unbounded."""


class _BoundedTarInfo(tarfile.TarInfo):
    """A ``TarInfo`` that refuses oversized header members before tarfile reads them.

    ``tarfile.open(..., tarinfo=_BoundedTarInfo)`` parses every 512-byte header with this class.
    ``_proc_member`` is where tarfile dispatches on a header's type (its source invites subclasses
    to override it); here it checks the sizes the header declares before the base class reads
    the data they announce: a GNU long name (type 'L') or link ('K'), or a pax header ('x', 'g'),
    declared over ``MAX_HEADER_BYTES``; GNU sparse files ('S', and pax's sparse format 1.0, whose
    map is read from the member's data until it ends) are refused outright: CINIC-10 has none.
    """
    _HEADER_TYPES = {tarfile.GNUTYPE_LONGNAME: "GNU long name", tarfile.GNUTYPE_LONGLINK: "GNU long link",
                     tarfile.XHDTYPE: "pax header", tarfile.XGLTYPE: "pax global header",
                     tarfile.SOLARIS_XHDTYPE: "Solaris pax header"}

    def _proc_member(self, tarfile_):
        kind = self._HEADER_TYPES.get(self.type)
        if kind and self.size > MAX_HEADER_BYTES:
            raise _RefusedHeader(f"refusing a {kind} of {self.size:,} bytes at offset {self.offset:,} "
                                 f"(at most {MAX_HEADER_BYTES:,}); a CINIC-10 archive's names are short")
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise _RefusedHeader(f"refusing the GNU sparse member {self.name!r}; CINIC-10 has none")
        return super()._proc_member(tarfile_)

    def _proc_gnusparse_10(self, next, pax_headers, tarfile_):
        raise _RefusedHeader(f"refusing the pax sparse member {next.name!r}; CINIC-10 has none")


def _unsafe(m, name, parts):
    """Why the member ``m`` (named ``name``, split into ``parts``) must not be unpacked, or ''."""
    if m.issym() or m.islnk():
        return f"a {'symbolic' if m.issym() else 'hard'} link to {m.linkname!r}"
    if not (m.isfile() or m.isdir()):
        return "not a regular file or folder (a device, FIFO or other special member)"
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        return "an absolute path"
    if ".." in parts:
        return "a '..' component that climbs out of the destination"
    if any(p in ("", ".") for p in parts):
        return "an empty or '.' path component"
    if re.search(r"[\\:\x00-\x1f\x7f]", name):
        return "a backslash, colon or control character in its name"
    if m.isfile() and m.size > (MAX_MEMBER_BYTES if len(parts) > 1 else MAX_TOP_LEVEL_FILE_BYTES):
        return f"{m.size} bytes, far more than a CINIC-10 file"
    return ""


def _check_members(members, path):
    """Raise DownloadError unless every member is safe, in the CINIC-10 layout, and unique."""
    seen = set()            # (split, class) folders present
    kinds = {}              # case-folded path -> 'file' or 'dir' (so nothing lands on top of anything)
    total = 0
    for m in members:
        name = m.name[2:] if m.name.startswith("./") else m.name
        name = name.rstrip("/") if m.isdir() else name
        if m.isdir() and name in ("", "."):     # the archive's root folder itself ('./')
            continue
        parts = name.split("/")
        why = _unsafe(m, name, parts)
        if why:
            raise DownloadError(f"{path}: refusing the unsafe member {m.name!r}: {why}")
        if parts[0] not in SPLITS and not (len(parts) == 1 and m.isfile()):
            raise DownloadError(f"{path}: unexpected member {m.name!r}; a CINIC-10 archive holds "
                                f"train/, valid/ and test/")
        if len(parts) >= 2:
            seen.add((parts[0], parts[1]))
        # Every parent must be a folder, and a file may neither replace nor sit where anything else
        # sits; names are compared case-folded, as Windows and macOS file systems compare them.
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i]).casefold()
            if kinds.setdefault(parent, "dir") != "dir":
                raise DownloadError(f"{path}: refusing {m.name!r}: it would go inside the file {parent!r}")
        kind = "dir" if m.isdir() else "file"
        before = kinds.get(name.casefold())
        if before is not None and "file" in (before, kind):
            raise DownloadError(f"{path}: refusing {m.name!r}: it would replace an earlier "
                                f"{'file' if before == 'file' else 'folder'} of the same name")
        kinds[name.casefold()] = kind
        total += m.size if m.isfile() else 0
        if total > MAX_TOTAL_BYTES:
            raise DownloadError(f"{path}: unpacks to more than {MAX_TOTAL_BYTES >> 30} GB; CINIC-10 is "
                                f"about 0.7 GB, so this is not it")
    missing = [f"{s}/{c}" for s in SPLITS for c in CLASSES if (s, c) not in seen]
    if missing:
        raise DownloadError(f"{path}: the archive lacks {len(missing)} class folders, e.g. {missing[0]}")


def _open_archive(path):
    """The open tar and its member list, or DownloadError saying why it cannot be read.

    Members are read one at a time (``tar.next()``), each header bounded by ``_BoundedTarInfo``,
    and at most ``MAX_MEMBERS`` of them.
    """
    tar = None
    try:
        tar = tarfile.open(path, "r:gz", tarinfo=_BoundedTarInfo)
        members = []
        while (member := tar.next()) is not None:
            members.append(member)
            if len(members) > MAX_MEMBERS:
                raise _RefusedHeader(f"more than {MAX_MEMBERS:,} members; CINIC-10 has about 270,000")
        return tar, members
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        if tar is not None:
            tar.close()
        if isinstance(e, _RefusedHeader):
            raise DownloadError(f"{path}: {e}") from None
        if isinstance(e, PermissionError):
            raise DownloadError(f"permission denied reading {path}; make it readable or download it "
                                f"again") from None
        raise DownloadError(f"{path} is not a readable .tar.gz archive ({e}); delete it and download "
                            f"again") from None


def check_archive(path):
    """Raise DownloadError unless ``path`` is a gzip tar laid out as CINIC-10; return its members.

    Refused: links (symbolic and hard), devices and FIFOs, absolute paths, ``..`` / ``.`` /
    empty components, backslashes, colons and control characters in names, a member that
    would land on or inside another (a file over a folder, a folder over a file, a second
    file of the same name, compared case-insensitively), files far bigger than CINIC-10's,
    anything outside train/, valid/ and test/ except top-level files, and a missing class folder.
    """
    tar, members = _open_archive(path)
    with tar:
        _check_members(members, path)
    return members


def unpack(path, dest, progress=False):
    """Unpack a checked archive into ``dest`` (created); a failure leaves no half-made ``dest``.

    The members checked are the members extracted, from one open archive, into
    ``dest + '.unpacking'``, which is renamed to ``dest`` once complete.
    """
    if os.path.lexists(dest):
        raise DownloadError(f"{dest} already exists; remove it (or move it away) to unpack again")
    tar, members = _open_archive(path)
    with tar:
        _check_members(members, path)
        if progress:
            print(f"unpacking {path} ...")
        tmp = dest + ".unpacking"
        if os.path.isdir(tmp) and not os.path.islink(tmp):
            import shutil
            shutil.rmtree(tmp)                  # left by an interrupted run
        elif os.path.lexists(tmp):
            os.remove(tmp)
        try:
            tar.extractall(tmp, members=members, filter="data")
        except (tarfile.TarError, EOFError, zlib.error) as e:
            raise DownloadError(f"{path}: unpacking failed ({e}); delete it and download again") from None
    os.replace(tmp, dest)
    return dest


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m ece662.data.download", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dest", default=os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), "datasets"), help="folder for the archive and cinic-10/")
    ap.add_argument("--url", default=URL)
    ap.add_argument("--no-cache", action="store_true", help="do not decode the PNGs into the cache")
    args = ap.parse_args(argv)
    archive = os.path.join(args.dest, "CINIC-10.tar.gz")
    target = os.path.join(args.dest, "cinic-10")
    try:
        os.makedirs(args.dest, exist_ok=True)
        if not os.path.isdir(target):
            if not os.path.exists(archive):
                fetch(args.url, archive)
            unpack(archive, target, progress=True)
        if not args.no_cache:
            data = read_tree(target)
            print("cached: " + ", ".join(f"{s} {len(data[s][1])}" for s in ("train", "val", "test")))
    except (DownloadError, OSError, ValueError) as e:
        # one line, no traceback: the message says what is wrong and what to do
        print(f"get_datasets: {e}", file=sys.stderr)
        return 1
    print(f"CINIC-10 is ready in {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
