"""A folder of hostile files: each bad one becomes a reject with a reason, the rest build."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from crispedit.core.images import ImageRejected, decode_image
from crispedit.engine import build
from crispedit.recipe import load_plan
from tests.helpers.recipes import write_recipe


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a huge size in 60 bytes: the classic decompression bomb shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def _save(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def make_hostile_folder(folder: Path) -> dict[str, str | None]:
    """Write the files; return file name -> expected reject category (None = must build)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
    jpeg = _save(photo, "JPEG", quality=90)
    files: dict[str, tuple[bytes, str | None]] = {
        "a_good.png": (_save(photo, "PNG"), None),
        "b_good.jpg": (jpeg, None),
        "c_cmyk.jpg": (_save(Image.new("CMYK", (32, 24), (0, 255, 255, 0)), "JPEG", quality=95), None),
        "d_deep16.png": (_save(Image.fromarray(np.full((24, 32), 257 * 100, dtype=np.uint16)), "PNG"), None),
        "e_alpha.png": (_save(Image.new("RGBA", (32, 24), (255, 0, 0, 0)), "PNG"), None),
        "f_palette.gif": (_save(photo.convert("P"), "GIF"), None),
        "g_empty.png": (b"", "empty file"),
        "h_truncated.jpg": (jpeg[: len(jpeg) // 2], "corrupt image"),
        "i_corrupt.png": (b"\x89PNG\r\n\x1a\n" + bytes(rng.integers(0, 255, 200, dtype=np.uint8)), "corrupt image"),
        "j_bomb.png": (_png_header_only(60000, 60000), "image too large"),
        "k_notes.txt": (b"these are not pixels\n", "not an image"),
    }
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    return {name: expected for name, (_, expected) in files.items()}


RECIPE = """\
name: hostile
output: {{dir: out, shard_size: 4}}
source:
  kind: folder
  folder: {folder}
  max_side: null
  size_multiple: 1
stages:
  - kind: instruct
    edits: [invert]
  - kind: classical
"""


def test_hostile_folder_builds_the_good_and_rejects_the_bad(tmp_path: Path) -> None:
    expected = make_hostile_folder(tmp_path / "photos")
    plan = load_plan(write_recipe(tmp_path, RECIPE.format(folder=tmp_path / "photos")), out=tmp_path / "out")
    result = build(plan, runner="local", progress=False)

    rejects = {r["source_ref"]: r for r in pq.read_table(tmp_path / "out" / "rejects").to_pylist()}
    want_rejected = {name: why for name, why in expected.items() if why}
    assert set(rejects) == set(want_rejected)
    for name, category in want_rejected.items():
        assert rejects[name]["stage"] == "source"
        assert rejects[name]["reason"].startswith(category), (name, rejects[name]["reason"])

    rows = pq.read_table(tmp_path / "out" / "data").to_pylist()
    assert len(rows) == len(expected) - len(want_rejected) == result.summary["rows"]
    assert result.summary["rejects"] == len(want_rejected)
    assert result.summary["stages"]["source"]["rejected"] == {"corrupt image": 2, "empty file": 1, "image too large": 1, "not an image": 1}
    pixels = {
        __import__("json").loads(r["provenance"])["source"]["ref"]: np.asarray(Image.open(io.BytesIO(r["source_image"]["bytes"])))
        for r in rows
    }
    # CMYK (0, 255, 255, 0) is pure red; 16-bit 25700 is 8-bit 100, not clipped white;
    # a fully transparent pixel shows the white background.
    assert np.abs(pixels["c_cmyk.jpg"].astype(int) - [255, 0, 0]).max() <= 6
    assert np.all(pixels["d_deep16.png"] == 100)  # 25700 / 65535 * 255
    assert np.all(pixels["e_alpha.png"] == 255)
    assert pixels["a_good.png"].shape == (40, 48, 3)
    for row in rows:
        source = np.asarray(Image.open(io.BytesIO(row["source_image"]["bytes"])))
        target = np.asarray(Image.open(io.BytesIO(row["target_image"]["bytes"])))
        assert np.array_equal(target, 255 - source)  # the instruction said invert; the pixels agree


def test_exif_orientation_is_applied() -> None:
    image = Image.fromarray(np.zeros((10, 30, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    data = _save(image, "JPEG", exif=exif.tobytes())
    pixels, notes = decode_image(data)
    assert pixels.shape == (30, 10, 3)
    assert notes == ["exif-rotated (orientation 6)"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [(b"", "empty file"), (b"GIF89a" + b"\x00" * 4, "corrupt image"), (_png_header_only(70000, 70000), "image too large")],
)
def test_decode_rejects_with_category(data: bytes, reason: str) -> None:
    with pytest.raises(ImageRejected) as caught:
        decode_image(data)
    assert caught.value.reason == reason


def test_max_pixels_is_checked_before_decoding() -> None:
    data = _save(Image.new("RGB", (200, 100)), "PNG")
    with pytest.raises(ImageRejected, match="200x100 exceeds 10000 pixels"):
        decode_image(data, max_pixels=10_000)
