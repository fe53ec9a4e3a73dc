"""Build zip archives byte by byte, for the hostile-file tests: members whose headers can lie.

``zipfile`` writes honest archives only: the sizes and CRC it records are those of the data it was
given.  A hostile archive records something else, so ``write_zip`` writes each local header, the
central directory and its end record itself (the layout of PKWARE's APPNOTE.TXT, sections 4.3.7,
4.3.12 and 4.3.16), from ``Member``s that say what to record and which bytes to store.
"""
import bz2
import functools
import struct
import zipfile
import zlib
from dataclasses import dataclass
from typing import Optional

STORED, DEFLATED, BZIP2, LZMA = 0, 8, 12, 14


@dataclass
class Member:
    """One member: ``data`` are the bytes stored (already compressed with ``method``); ``file_size``
    and ``crc`` are what the headers record (by default the truth for a stored member)."""
    name: str
    data: bytes
    method: int = STORED
    file_size: Optional[int] = None
    crc: Optional[int] = None
    local_name: Optional[str] = None      # the name in the local header, if it differs


def stored(name, content):
    return Member(name, content)


def members_of(path):
    """The members of an honest archive, each as a stored ``Member`` (so a test can swap one)."""
    with zipfile.ZipFile(path) as z:
        return [stored(i.filename, z.read(i)) for i in z.infolist()]


def write_zip(path, members):
    """Write ``members`` (a list of ``Member``) as a zip archive at ``path``; return ``path``."""
    out, central = bytearray(), bytearray()
    for m in members:
        size = len(m.data) if m.file_size is None else m.file_size
        crc = zlib.crc32(m.data) if m.crc is None else m.crc
        name, local = m.name.encode(), (m.local_name or m.name).encode()
        offset = len(out)
        # local file header: signature, version 2.0, flags 0, method, time, date 1980-01-01, crc, sizes
        out += struct.pack("<4s2B4HL2L2H", b"PK\x03\x04", 20, 0, 0, m.method, 0, 0x21, crc,
                           len(m.data), size, len(local), 0) + local + m.data
        central += struct.pack("<4s4B4HL2L5H2L", b"PK\x01\x02", 20, 0, 20, 0, 0, m.method, 0, 0x21, crc,
                               len(m.data), size, len(name), 0, 0, 0, 0, 0, offset) + name
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central), len(out), 0)
    with open(path, "wb") as f:
        f.write(bytes(out + central + end))
    return path


@functools.lru_cache(maxsize=None)
def _zeros_block():
    """Raw deflate of 1 MiB of zeros, ending on a byte boundary with nothing carried over (a full
    flush), so that copies of it, one after another, inflate to that many MiB of zeros."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)


def deflate_then_zeros(content, zero_bytes):
    """Raw deflate data that inflate to ``content`` followed by ``zero_bytes`` zeros (about 1 kB per
    MiB: a 1.5 GB bomb in 1.5 MB, built in milliseconds)."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(content) + c.flush(zlib.Z_FULL_FLUSH)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    tail = c.compress(bytes(zero_bytes % (1 << 20))) + c.flush(zlib.Z_FULL_FLUSH)
    return head + _zeros_block() * (zero_bytes >> 20) + tail + b"\x03\x00"   # a final, empty block ends it


def deflate_lie(name, content, zero_mib):
    """A deflated member that declares ``content`` (its size and CRC) but inflates ``zero_mib`` MiB further."""
    return Member(name, deflate_then_zeros(content, zero_mib << 20), DEFLATED, len(content), zlib.crc32(content))


def deflate_zeros(name, header, zero_bytes):
    """An honest deflated member: ``header`` then ``zero_bytes`` zeros, its size and CRC true."""
    crc = zlib.crc32(bytes(zero_bytes), zlib.crc32(header))
    return Member(name, deflate_then_zeros(header, zero_bytes), DEFLATED, len(header) + zero_bytes, crc)


@functools.lru_cache(maxsize=None)
def _packed_zeros(method, mib):
    """``mib`` MiB of zeros compressed as zip method ``method`` (bzip2: 1.7 kB for 256 MiB)."""
    c = bz2.BZ2Compressor(9) if method == BZIP2 else zipfile.LZMACompressor()
    chunk = bytes(1 << 20)
    return b"".join(c.compress(chunk) for _ in range(mib)) + c.flush()


def packed_lie(name, method, declared, mib):
    """A bzip2 or lzma member that declares ``declared`` bytes and inflates to ``mib`` MiB of zeros."""
    return Member(name, _packed_zeros(method, mib), method, declared, zlib.crc32(bytes(declared)))
