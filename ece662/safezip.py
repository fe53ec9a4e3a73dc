"""Reading the members of an untrusted zip archive, never more bytes than each one declares.

Every zip-based file ece662 reads (a PyTorch ``.pt``, an ece662 or data ``.npz``, a Keras ``.keras``)
goes through :class:`ZipReader` here, because ``zipfile`` alone trusts the archive too much:

* A member's *declared* size (``file_size``, from the central directory) is what the readers check
  their budgets against, but ``zipfile`` decompresses a bzip2 or lzma member in one call, whatever it
  declares: 1.8 kB of bzip2 become 2 GB in memory before the first byte is returned.  Deflate is
  bounded only when the caller reads in small pieces.  Here only *stored* (method 0) and *deflate*
  (method 8, what ``np.savez_compressed`` and ``zipfile.ZIP_DEFLATED`` write) are read, and deflate is
  inflated in pieces of at most the size asked for (``zlib``'s ``max_length``).  A member that would
  inflate past its declared size is refused, not cut short.
* Two members with the same name are read differently by different tools (torch takes the first,
  ``zipfile`` the last), so an archive holding a name twice is refused.
* The local header in front of each member must agree with the central directory (name, method), and
  the member must lie inside the file.  Encrypted members are refused.
* The CRC-32 of every member read to its end is checked, so a flipped bit is an error, not
  different weights.

Every refusal is a ``ValueError`` that names the file and the member.  This module imports nothing
of ece662, so both ``ece662.data`` and ``ece662.formats`` can use it.
"""
import io
import os
import struct
import zipfile
import zlib

STORED, DEFLATED = 0, 8
_METHOD_NAMES = {0: "stored", 8: "deflate", 9: "deflate64", 12: "bzip2", 14: "lzma", 93: "zstandard",
                 95: "xz", 98: "ppmd", 99: "AES-encrypted"}
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")   # signature, versions, flags, method, time, date, crc, sizes, name/extra lengths
_IN_CHUNK = 256 << 10                             # compressed bytes read from the file at a time


class ZipReader:
    """A zip archive opened for reading members whose sizes cannot lie.

    Parameters
    ----------
    path : str or os.PathLike

    Raises
    ------
    zipfile.BadZipFile, OSError, EOFError, ValueError
        As ``zipfile.ZipFile(path)`` does for a file that is not a zip archive; each reader turns
        these into its own message (what the file looks like instead).

    Examples
    --------
    >>> import os, tempfile, zipfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.zip")
    >>> with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
    ...     z.writestr("hello.txt", b"hello " * 1000)
    >>> with ZipReader(path) as z:
    ...     z.namelist(), len(z.read("hello.txt", max_bytes=10_000))
    (['hello.txt'], 6000)
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        self._file = open(self.path, "rb")
        try:
            self.size = os.fstat(self._file.fileno()).st_size
            self._zip = zipfile.ZipFile(self._file)     # parses the central directory only
        except (zipfile.BadZipFile, OSError, EOFError):
            self._file.close()
            raise
        except Exception as e:      # zipfile's other ways to fail on a damaged directory: one kind of error
            self._file.close()
            raise zipfile.BadZipFile(f"a damaged zip directory ({type(e).__name__}: {str(e)[:120]})") from None
        except BaseException:
            self._file.close()
            raise
        self._infos = None

    # -- the members, each name once
    def infolist(self):
        """The members' ``zipfile.ZipInfo``, in archive order; refuses a name that appears twice."""
        if self._infos is None:
            infos = {}
            for info in self._zip.infolist():
                if info.filename in infos:
                    raise ValueError(f"{self.path}: the archive holds two members named {info.filename!r}; "
                                     f"tools disagree on which one counts (torch reads the first, Python's "
                                     f"zipfile the last), so the file is refused as crafted or damaged")
                infos[info.filename] = info
            self._infos = infos
        return list(self._infos.values())

    def namelist(self):
        return [info.filename for info in self.infolist()]

    def getinfo(self, name):
        """The ``ZipInfo`` of member ``name``; ``KeyError`` if there is none."""
        self.infolist()
        return self._infos[name]

    # -- reading
    def open(self, member, max_bytes):
        """A read-only stream of a member's bytes (a ``MemberStream``).

        ``member`` is a name or a ``ZipInfo`` of this archive.  A member that declares more than
        ``max_bytes`` is refused before a byte is read; the stream then returns at most the declared
        size and raises ``ValueError`` if the data would inflate past it, end before it, or fail
        their CRC-32.
        """
        info = member if isinstance(member, zipfile.ZipInfo) else self.getinfo(member)
        return MemberStream(self, info, max_bytes)

    def read(self, member, max_bytes):
        """All of a member's bytes (at most ``max_bytes``, checked before reading)."""
        with self.open(member, max_bytes) as f:
            return f.read()

    def close(self):
        self._zip.close()
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class MemberStream(io.RawIOBase):
    """The bytes of one member, decompressed in bounded pieces (see :meth:`ZipReader.open`)."""

    def __init__(self, archive, info, max_bytes):
        super().__init__()
        self._file, self._pos = archive._file, 0
        self._where = f"{archive.path}: member {info.filename!r}"
        self._crc, self._expected_crc = 0, info.CRC
        self._left = info.file_size                # bytes still to come out
        method = _METHOD_NAMES.get(info.compress_type, f"number {info.compress_type}")
        if info.compress_type not in (STORED, DEFLATED):
            raise ValueError(f"{self._where} is compressed with {method} (zip method {info.compress_type}); "
                             f"ece662 reads only stored and deflate members, whose size it can bound while "
                             f"reading (re-save the file with np.savez, torch.save or model.save)")
        if info.flag_bits & 0x1:
            raise ValueError(f"{self._where} is encrypted; ece662 reads unencrypted archives only")
        if info.file_size > max_bytes:
            raise ValueError(f"{self._where} declares {info.file_size:,} bytes, more than the "
                             f"{max_bytes:,} this reader allows for it")
        if info.compress_type == STORED and info.compress_size != info.file_size:
            raise ValueError(f"{self._where} is stored (not compressed) but declares {info.file_size:,} bytes "
                             f"and {info.compress_size:,} compressed; the file is damaged or crafted")
        # the local header in front of the data must describe the same member as the central directory
        self._file.seek(info.header_offset)
        head = self._file.read(_LOCAL_HEADER.size)
        if len(head) < _LOCAL_HEADER.size or head[:4] != b"PK\x03\x04":
            raise ValueError(f"{self._where}: no local header where the central directory puts it "
                             f"(byte {info.header_offset:,}); the file is truncated or damaged")
        fields = _LOCAL_HEADER.unpack(head)
        flags, local_method, name_len, extra_len = fields[3], fields[4], fields[10], fields[11]
        name = self._file.read(name_len).decode("utf-8" if flags & 0x800 else "cp437", "replace")
        if name != info.orig_filename or local_method != info.compress_type:
            raise ValueError(f"{self._where}: its local header says {name!r} (method {local_method}), the "
                             f"central directory {info.orig_filename!r} (method {info.compress_type}); "
                             f"tools that read one or the other would see different files")
        self._data_start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
        if self._data_start + info.compress_size > archive.size:
            what = "bytes" if info.compress_type == STORED else "compressed bytes"
            raise ValueError(f"{self._where} declares {info.compress_size:,} {what}, more than the "
                             f"archive holds; the file is truncated or damaged")
        self._raw_at, self._raw_left = self._data_start, info.compress_size   # compressed bytes still unread
        self._inflate = zlib.decompressobj(-15) if info.compress_type == DEFLATED else None
        self._declared = info.file_size

    def readable(self):
        return True

    def tell(self):
        return self._pos

    def _raw(self, n):
        """Up to ``n`` of the member's compressed bytes, from where the last call stopped."""
        n = min(n, self._raw_left)
        self._file.seek(self._raw_at)
        data = self._file.read(n)
        self._raw_at += len(data)
        self._raw_left = self._raw_left - len(data) if data else 0     # a short file ends the member
        return data

    def read(self, n=-1):
        """Up to ``n`` bytes (all that are left for ``n < 0``); ``b""`` at the end of the member."""
        if n is None or n < 0:
            pieces = []
            while piece := self.read(4 << 20):     # at most the declared size in all
                pieces.append(piece)
            return b"".join(pieces)
        n = min(n, self._left)
        if n == 0:
            return b""
        try:
            data = self._raw(n) if self._inflate is None else self._inflate_up_to(n)
        except zlib.error as e:
            raise ValueError(f"{self._where} cannot be decompressed ({e}); the file is damaged") from None
        if not data:
            raise ValueError(f"{self._where} ends after {self._pos:,} of its {self._declared:,} bytes; "
                             f"the file is truncated or damaged")
        self._crc = zlib.crc32(data, self._crc)
        self._pos += len(data)
        self._left -= len(data)
        if self._left == 0:
            self._check_end()
        return data

    def readinto(self, buffer):
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def _inflate_up_to(self, n):
        """At most ``n`` inflated bytes (at least one unless the compressed data run out)."""
        while True:
            src = self._inflate.unconsumed_tail or self._raw(_IN_CHUNK)
            data = self._inflate.decompress(src, n)
            if data or self._inflate.eof or not src:
                return data

    def _check_end(self):
        """After the declared size: the deflate stream must end here, and the CRC-32 must match."""
        if self._inflate is not None:
            try:
                while not self._inflate.eof:
                    src = self._inflate.unconsumed_tail or self._raw(_IN_CHUNK)
                    if self._inflate.decompress(src, 1):
                        raise ValueError(f"{self._where} inflates to more than the {self._declared:,} bytes "
                                         f"it declares; refused as a compression bomb or a damaged file")
                    if not src:
                        raise ValueError(f"{self._where}: its compressed data do not end after the "
                                         f"{self._declared:,} bytes it declares; the file is damaged")
            except zlib.error as e:
                raise ValueError(f"{self._where} cannot be decompressed ({e}); the file is damaged") from None
        if self._crc != self._expected_crc:
            raise ValueError(f"{self._where}: bad CRC-32 (the bytes read are not the bytes written); "
                             f"the file is damaged")
