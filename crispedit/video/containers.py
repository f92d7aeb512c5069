"""What a file's bytes say before anything is decoded: is it a video container, and is it whole?

The ``videos`` source runs these checks on every item, so a text file, random bytes or a
download cut short become rejects by name without starting a decoder (decord even "opens" a
text file as a one-frame video). Two containers carry their own length: an ISO media file
(MP4, MOV, M4V, 3GP) is a chain of boxes that each state their size, and a RIFF file (AVI)
states its total size in its header; a file that ends before those sizes do was cut short.
OpenCV's MP4 writer puts the ``moov`` index after the media data, so a cut-short MP4 usually
has no index at all and no decoder can open it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

#: Bytes read from the start of a file to recognise its container (an MPEG-TS needs three 188-byte packets).
HEAD_BYTES = 400

#: Box types that may open an ISO base media file (ISO/IEC 14496-12), as real files start.
_ISO_FIRST = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid", b"styp"}


def sniff(head: bytes) -> str | None:
    """The container a file's first bytes announce, or None when they announce no video container."""
    if len(head) >= 8 and head[4:8] in _ISO_FIRST:
        return "iso-bmff"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"
    if head.startswith(b"RIFF") and head[8:12] in (b"AVI ", b"AVIX"):
        return "avi"
    if head.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"):
        return "asf"
    if head.startswith(b"FLV"):
        return "flv"
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith((b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3")):
        return "mpeg-ps"
    if len(head) > 376 and head[0] == head[188] == head[376] == 0x47:
        return "mpeg-ts"
    return None


def describe_head(head: bytes) -> str:
    """A short, safe description of bytes that are not a video, for a reject reason."""
    if not head:
        return "no bytes"
    sample = head[:64]
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in sample) / len(sample)
    if printable > 0.95:
        return "it looks like text"
    return f"it starts with bytes {sample[:8].hex()} (no known video container)"


def truncation(kind: str, size: int, read_at: Callable[[int, int], bytes]) -> str | None:
    """Why a file of ``size`` bytes is cut short, or None when its container's own sizes fit.

    ``read_at(offset, length)`` returns up to ``length`` bytes at ``offset``.
    """
    if kind == "avi":
        head = read_at(0, 8)
        declared = struct.unpack("<I", head[4:8])[0] + 8
        if declared > size:
            return f"the RIFF header declares {declared} bytes, the file has {size}"
        return None
    if kind == "iso-bmff":
        return _iso_truncation(size, read_at)
    return None


def _iso_truncation(size: int, read_at: Callable[[int, int], bytes]) -> str | None:
    offset, seen = 0, []
    while offset + 8 <= size:
        header = read_at(offset, 16)
        if len(header) < 8:
            break
        box_size, box_type = struct.unpack(">I4s", header[:8])
        if box_size == 1:  # a 64-bit size follows
            if len(header) < 16:
                return f"the {_name(box_type)} box's size field is cut off"
            box_size = struct.unpack(">Q", header[8:16])[0]
        elif box_size == 0:  # the box runs to the end of the file
            box_size = size - offset
        if box_size < 8:
            return f"a box at byte {offset} declares an impossible size {box_size}"
        seen.append(box_type)
        if offset + box_size > size:
            return f"the {_name(box_type)} box needs {box_size} bytes from byte {offset}, the file ends after {size}"
        offset += box_size
    if b"moov" not in seen and b"moof" not in seen:
        return "no moov box (the index a player needs) in the whole file"
    return None


def _name(box_type: bytes) -> str:
    return box_type.decode("latin-1") if all(32 <= b < 127 for b in box_type) else box_type.hex()
