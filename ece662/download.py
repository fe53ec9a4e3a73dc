"""Download the official CINIC-10 archive, check it, unpack it, and build the uint8 cache.

    python -m ece662.download [--dest datasets] [--url URL]
    bash datasets/get_datasets.sh            # the same with curl and tar

The archive (about 700 MB) is fetched into ``<dest>/CINIC-10.tar.gz`` with HTTP range
requests, so an interrupted download resumes where it stopped.  It is then checked (a
readable gzip tar whose members all lie under train/, valid/ or test/ with the ten class
folders, nothing outside the destination) and unpacked into ``<dest>/cinic-10/``; finally
``get_CINIC10_data`` decodes the PNGs once into its cache.  Offline, it stops with a
message saying so and what to do instead.
"""
import argparse
import os
import sys
import tarfile
import urllib.error
import urllib.request

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


def check_archive(path):
    """Raise DownloadError unless ``path`` is a gzip tar laid out as CINIC-10; return its members."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = tar.getmembers()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DownloadError(f"{path} is not a readable .tar.gz archive ({e}); delete it and download "
                            f"again") from None
    from ece662.data_utils import CLASSES
    seen = set()
    for m in members:
        name = m.name[2:] if m.name.startswith("./") else m.name
        parts = name.split("/")
        if name.startswith("/") or ".." in parts or not (m.isfile() or m.isdir()):
            raise DownloadError(f"{path}: refusing the unsafe member {m.name!r}")
        if parts[0] and parts[0] not in SPLITS and not (len(parts) == 1 and m.isfile()):
            raise DownloadError(f"{path}: unexpected member {m.name!r}; a CINIC-10 archive holds "
                                f"train/, valid/ and test/")
        if len(parts) >= 2 and parts[0] in SPLITS:
            seen.add((parts[0], parts[1]))
    missing = [f"{s}/{c}" for s in SPLITS for c in CLASSES if (s, c) not in seen]
    if missing:
        raise DownloadError(f"{path}: the archive lacks {len(missing)} class folders, e.g. {missing[0]}")
    return members


def unpack(path, dest):
    """Unpack a checked archive into ``dest`` (created); a failure leaves no half-made ``dest``."""
    check_archive(path)
    tmp = dest + ".unpacking"
    if os.path.exists(tmp):
        import shutil
        shutil.rmtree(tmp)
    with tarfile.open(path, "r:gz") as tar:
        tar.extractall(tmp, filter="data")
    os.replace(tmp, dest)
    return dest


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m ece662.download", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dest", default=os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), "datasets"), help="folder for the archive and cinic-10/")
    ap.add_argument("--url", default=URL)
    ap.add_argument("--no-cache", action="store_true", help="do not decode the PNGs into the cache")
    args = ap.parse_args(argv)
    os.makedirs(args.dest, exist_ok=True)
    archive = os.path.join(args.dest, "CINIC-10.tar.gz")
    target = os.path.join(args.dest, "cinic-10")
    try:
        if not os.path.isdir(target):
            if not os.path.exists(archive):
                fetch(args.url, archive)
            print(f"checking and unpacking {archive} ...")
            unpack(archive, target)
        if not args.no_cache:
            from ece662.data_utils import get_CINIC10_data
            data = get_CINIC10_data(target, normalize=False)
            print("cached: " + ", ".join(f"{s} {len(data['y_' + s])}" for s in ("train", "val", "test")))
    except DownloadError as e:
        print(f"get_datasets: {e}", file=sys.stderr)
        return 1
    print(f"CINIC-10 is ready in {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
