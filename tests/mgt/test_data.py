"""Shard reading: crispedit and upstream columns, checked decoding, one crop window."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from crispedit.core.images import ImageRejected
from crispedit.mgt.data import crop_pair, decode_rgb
from crispedit.mgt.shard_index import DatasetIndex
from tests.mgt.conftest import write_crispedit_shard


def test_reads_crispedit_and_upstream_columns(tmp_path):
    ours = DatasetIndex(write_crispedit_shard(tmp_path / "ours", 5, tasks=("tone", "color")))
    theirs = DatasetIndex(write_crispedit_shard(tmp_path / "theirs", 4, upstream_names=True))
    assert len(ours) == 5 and len(theirs) == 4
    assert ours.task_values() == {"tone", "color"} and theirs.task_values() == set()
    for ds in (ours, theirs):
        table = ds.read(1)
        assert table.column_names[:3] == ["instruction", "source", "target"]
        row = table.slice(0, 1).to_pylist()[0]
        assert row["instruction"] and np.asarray(decode_rgb(row["source"])).shape == (16, 24, 3)
        assert np.asarray(decode_rgb(row["target"])).dtype == np.uint8


def test_missing_column_names_the_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "data").mkdir()
    pq.write_table(pa.table({"instruction": ["x"], "foo": [b"1"]}), tmp_path / "data" / "train-0.parquet")
    with pytest.raises(ValueError, match="train-0.parquet: no source image column"):
        DatasetIndex(tmp_path)


def test_decoding_uses_the_checked_decoder():
    """Shard images go through crispedit.core.images: a pixel bomb is refused from its header."""
    import io

    buf = io.BytesIO()
    Image.new("RGB", (300, 200)).save(buf, format="PNG")
    with pytest.raises(ImageRejected, match="image too large"):
        decode_rgb({"bytes": buf.getvalue(), "path": None}, max_pixels=100 * 100)
    with pytest.raises(ImageRejected, match="not an image"):
        decode_rgb(b"definitely not an image")


def test_source_and_target_share_one_crop_window():
    """A wide pair whose target equals the source: any crop must keep them equal."""
    arr = np.random.default_rng(0).integers(0, 255, (16, 48, 3), dtype=np.uint8)
    rng = np.random.default_rng(1)
    lefts = set()
    for _ in range(10):
        s, t, micro = crop_pair(arr, arr.copy(), 16, rng)
        assert s.dtype == torch.uint8 and s.shape == (3, 16, 16)
        assert torch.equal(s, t)
        lefts.add(micro[3])
    assert len(lefts) > 1  # the window really moves
    # the window is the crop of the scaled image: at scale 1 it is exactly a slice of the array
    s, _, micro = crop_pair(arr, arr, 16, np.random.default_rng(2))
    left = int(micro[3])
    assert torch.equal(s, torch.from_numpy(arr[:, left:left + 16]).permute(2, 0, 1))
    # a target at another size is resized to the source's before the shared crop
    yy, xx = np.mgrid[0:16, 0:48]
    smooth = Image.fromarray(np.stack([xx * 5, yy * 15, xx * 2 + yy * 4], axis=2).astype(np.uint8))
    s, t, _ = crop_pair(smooth, smooth.resize((96, 32)), 16, np.random.default_rng(2))
    assert (s.float() - t.float()).abs().mean() / 255 < 0.02
