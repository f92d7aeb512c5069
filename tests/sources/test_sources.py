"""The collection sources on small data written here: Parquet, save_to_disk datasets, WebDataset tars.

Each must count from metadata alone, give the same items however it is sliced, and turn
a corrupt image into a reject that names where it came from (file and row, or tar member).
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from crispedit.core.sample import Sample
from crispedit.core.source import Source
from crispedit.core.stage import BuildContext
from crispedit.recipe.catalog import SOURCES
from crispedit.sources import parquet as source_parquet
from crispedit.sources import records as source_records
from crispedit.sources import webdataset as source_webdataset
from tests.helpers.s3_server import S3, s3  # noqa: F401  (the fixture)

CORRUPT_JPEG = b"\xff\xd8\xff\xe0" + b"\x00garbage" * 8


def color(i: int) -> tuple[int, int, int]:
    return (i * 37 % 256, i * 91 % 256, i * 53 % 256)


def encoded(i: int, fmt: str = "PNG", side: int = 40) -> bytes:
    """A solid-colour image whose colour encodes ``i`` (lossless PNG unless asked)."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side + 8), color(i)).save(buffer, format=fmt)
    return buffer.getvalue()


def make(kind: str, tmp_path: Path, **params: Any) -> Source:
    cls = SOURCES[kind]
    context = BuildContext(recipe_name="t", fingerprint="0123456789abcdef", seed=0, cache_dir=tmp_path / "cache")
    return cls(cls.Params.model_validate(params), context)


@pytest.fixture(autouse=True)
def fresh_caches() -> None:
    """Each test sees its own files: per-process layout caches must not carry over between tests."""
    source_parquet._LAYOUTS.clear()
    source_webdataset._INDEXES.clear()


def pixel(sample: Sample) -> tuple[int, ...]:
    assert sample.source_image is not None, sample.reject
    return tuple(int(v) for v in sample.source_image[0, 0])


def check_slicing(source: Source) -> list[Sample]:
    """Loading in pieces gives exactly what loading at once gives."""
    n = source.count()
    whole = source.load(0, n)
    pieces = source.load(0, 3) + source.load(3, n - 2) + source.load(n - 2, n)
    assert [s.id for s in whole] == [s.id for s in pieces]
    assert [s.index for s in whole] == list(range(n))
    assert [s.source_ref for s in whole] == [s.source_ref for s in pieces]
    for a, b in zip(whole, pieces):
        assert (a.source_image is None) == (b.source_image is None)
        if a.source_image is not None:
            assert np.array_equal(a.source_image, b.source_image)
    return whole


# --- parquet -------------------------------------------------------------------------------


def write_parquet(path: Path, image_type: str, first: int, count: int, corrupt: set[int] = frozenset(), row_group: int = 3) -> None:
    """Rows first..first+count; ``image_type`` 'struct' (HF Image), 'bytes' or 'path' (images written beside it)."""
    cells: list[Any] = []
    for i in range(first, first + count):
        data = CORRUPT_JPEG if i in corrupt else encoded(i)
        if image_type == "struct":
            cells.append({"bytes": data, "path": f"{i}.png"})
        elif image_type == "bytes":
            cells.append(data)
        else:
            (path.parent / "images").mkdir(exist_ok=True)
            (path.parent / "images" / f"{i}.png").write_bytes(data)
            cells.append(f"images/{i}.png")
    column_type = {
        "struct": pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
        "bytes": pa.binary(),
        "path": pa.string(),
    }[image_type]
    table = pa.table(
        {"image": pa.array(cells, column_type), "caption": [f"caption {i}" for i in range(first, first + count)]}
    )
    pq.write_table(table, path, row_group_size=row_group)


@pytest.mark.parametrize("image_type", ["struct", "bytes"])
def test_parquet_embedded_images(tmp_path: Path, image_type: str) -> None:
    write_parquet(tmp_path / "part-0.parquet", image_type, 0, 7, corrupt={2})
    write_parquet(tmp_path / "part-1.parquet", image_type, 7, 5)
    (tmp_path / "notes.txt").write_text("not parquet")
    source = make("parquet", tmp_path, files=[str(tmp_path)], max_side=None, size_multiple=1)
    assert source.count() == 12
    samples = check_slicing(source)
    bad = samples[2]
    assert not bad.alive and bad.reject.reason.startswith("corrupt image")
    assert bad.source_ref == "part-0.parquet:row 2"
    good = [s for s in samples if s.alive]
    assert len(good) == 11
    assert samples[8].source_ref == "part-1.parquet:row 1" and pixel(samples[8]) == color(8)
    assert samples[8].source_caption == "caption 8" and samples[8].source_image.shape == (48, 40, 3)
    assert samples[8].provenance["source"]["ref"] == "part-1.parquet:row 1"


def test_parquet_path_column_against_a_base(tmp_path: Path) -> None:
    write_parquet(tmp_path / "index.parquet", "path", 0, 6, corrupt={4})
    (tmp_path / "images" / "1.png").unlink()  # a dangling reference
    table = pq.read_table(tmp_path / "index.parquet")
    cells = table.column("image").to_pylist()
    cells[3] = "../../etc/passwd"  # must not be read, whatever it is
    pq.write_table(table.set_column(0, "image", pa.array(cells)), tmp_path / "index.parquet")
    source = make("parquet", tmp_path, files=str(tmp_path / "index.parquet"), base=str(tmp_path), max_side=None, size_multiple=1)
    samples = check_slicing(source)
    reasons = {s.index: s.reject.reason.split(":")[0] for s in samples if not s.alive}
    assert reasons == {1: "unreadable file", 3: "unsafe path", 4: "corrupt image"}
    assert samples[4].source_ref == "index.parquet:row 4"
    assert pixel(samples[5]) == color(5)


def test_parquet_reads_only_the_row_groups_a_shard_needs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_parquet(tmp_path / "big.parquet", "bytes", 0, 20, row_group=4)
    source = make("parquet", tmp_path, files=[str(tmp_path / "big.parquet")], caption_column=None)
    assert source.count() == 20  # footers only
    read: list[tuple[list[int], list[str]]] = []
    original = pq.ParquetFile.read_row_groups

    def spy(self: pq.ParquetFile, groups: list[int], columns: list[str] | None = None, **kwargs: Any) -> pa.Table:
        read.append((list(groups), list(columns or [])))
        return original(self, groups, columns=columns, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", spy)
    monkeypatch.setattr(pq, "read_table", lambda *a, **k: pytest.fail("a whole file was read"))
    samples = source.load(5, 11)
    assert read == [([1, 2], ["image"])]
    assert [s.source_ref for s in samples] == [f"big.parquet:row {i}" for i in range(5, 11)]
    assert all(s.source_caption is None for s in samples) and "source_caption" not in source.outputs()


def test_parquet_count_decodes_nothing_and_honours_limit_and_edits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_parquet(tmp_path / "a.parquet", "struct", 0, 9)
    monkeypatch.setattr(source_records, "decode_image", lambda *a, **k: pytest.fail("count() decoded an image"))
    source = make("parquet", tmp_path, files=[str(tmp_path / "a.parquet")], limit=4, edits_per_image=2)
    assert source.count() == 8
    monkeypatch.undo()
    samples = source.load(0, 8)
    assert [s.meta["image_index"] for s in samples] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [s.meta["variant"] for s in samples] == [0, 1] * 4
    assert len({s.id for s in samples}) == 8


def test_parquet_worker_with_a_stale_cached_layout_reads_the_new_files(tmp_path: Path) -> None:
    """A long-lived worker cached the layout of an earlier build; the files were rewritten since."""
    write_parquet(tmp_path / "a.parquet", "bytes", 0, 6, row_group=3)
    assert make("parquet", tmp_path, files=[str(tmp_path / "a.parquet")]).count() == 6
    write_parquet(tmp_path / "a.parquet", "bytes", 100, 9, row_group=4)  # same name, new rows
    worker = make("parquet", tmp_path, files=[str(tmp_path / "a.parquet")], max_side=None, size_multiple=1)
    samples = worker.load(1, 5)  # no count() here: a worker only loads; the footer disagrees with the cache
    assert [s.source_caption for s in samples] == [f"caption {i}" for i in range(101, 105)]
    assert pixel(samples[0]) == color(101)
    write_parquet(tmp_path / "a.parquet", "bytes", 200, 12, row_group=4)  # grown: same row groups at the start
    samples = worker.load(8, 12)  # past the cached total
    assert [s.source_caption for s in samples] == [f"caption {i}" for i in range(208, 212)]
    assert make("parquet", tmp_path, files=[str(tmp_path / "a.parquet")]).count() == 12


def test_parquet_column_errors_are_clear(tmp_path: Path) -> None:
    write_parquet(tmp_path / "a.parquet", "struct", 0, 2)
    with pytest.raises(ValueError, match="no column 'picture'"):
        make("parquet", tmp_path, files=[str(tmp_path / "a.parquet")], image_column="picture").count()
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        make("parquet", tmp_path, files=[str(tmp_path / "nothing-here")]).count()


def test_parquet_from_s3(tmp_path: Path, s3: S3) -> None:  # noqa: F811
    prefix = s3.new_prefix()
    for name, first in (("p-0.parquet", 0), ("p-1.parquet", 4)):
        write_parquet(tmp_path / name, "struct", first, 4, corrupt={5})
        s3.fs().put_file(str(tmp_path / name), f"{prefix}/{name}")
    source = make("parquet", tmp_path, files=[f"{prefix}/*.parquet"], storage_options=s3.storage_options, max_side=None, size_multiple=1)
    assert source.count() == 8
    samples = check_slicing(source)
    assert samples[5].source_ref == "p-1.parquet:row 1" and samples[5].reject.reason.startswith("corrupt image")
    assert [pixel(s) for s in samples if s.alive] == [color(i) for i in range(8) if i != 5]
    local = make("parquet", tmp_path, files=[str(tmp_path / "p-0.parquet"), str(tmp_path / "p-1.parquet")])
    assert local.context.fingerprint == source.context.fingerprint
    assert "storage_options" not in source.params.model_dump(), "how data is reached is not part of the fingerprint"


# --- hf_dataset ------------------------------------------------------------------------------


def save_dataset(folder: Path, count: int, corrupt: set[int], split: str | None = None) -> None:
    import datasets

    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string"), "extra": datasets.Value("int32")})
    rows = {
        "image": [{"bytes": CORRUPT_JPEG if i in corrupt else encoded(i), "path": None} for i in range(count)],
        "text": [f"text {i}" for i in range(count)],
        "extra": list(range(count)),
    }
    dataset = datasets.Dataset.from_dict(rows, features=features)
    target = datasets.DatasetDict({split: dataset}) if split else dataset
    target.save_to_disk(str(folder))


def test_hf_dataset_save_to_disk(tmp_path: Path) -> None:
    save_dataset(tmp_path / "coco-mini", 9, corrupt={6})
    source = make("hf_dataset", tmp_path, path=str(tmp_path / "coco-mini"), caption_column="text", max_side=None, size_multiple=1)
    assert source.count() == 9
    samples = check_slicing(source)
    assert samples[6].source_ref == "coco-mini[train]:row 6" and samples[6].reject.reason.startswith("corrupt image")
    assert samples[7].source_caption == "text 7" and pixel(samples[7]) == color(7)


def test_hf_dataset_dict_split_and_parquet_folder(tmp_path: Path) -> None:
    save_dataset(tmp_path / "dict", 5, corrupt=set(), split="validation")
    source = make("hf_dataset", tmp_path, path=str(tmp_path / "dict"), split="validation", max_side=None, size_multiple=1)
    assert source.count() == 5 and pixel(source.load(4, 5)[0]) == color(4)
    with pytest.raises(ValueError, match="no split 'train'"):
        make("hf_dataset", tmp_path, path=str(tmp_path / "dict")).count()
    # A plain folder of Parquet files is a dataset too: read in place by row group, like the Hub's.
    (tmp_path / "pq" / "data").mkdir(parents=True)
    write_parquet(tmp_path / "pq" / "data" / "train-00000-of-00001.parquet", "struct", 0, 6, corrupt={1})
    source = make("hf_dataset", tmp_path, path=str(tmp_path / "pq"), caption_column="caption", max_side=None, size_multiple=1)
    assert source.count() == 6 and source._route()[0] == "parquet"
    samples = check_slicing(source)
    assert samples[1].source_ref == "train-00000-of-00001.parquet:row 1" and not samples[1].alive
    assert samples[3].source_caption == "caption 3" and pixel(samples[3]) == color(3)


def test_hf_dataset_missing_column(tmp_path: Path) -> None:
    save_dataset(tmp_path / "d", 2, corrupt=set())
    with pytest.raises(ValueError, match="no column 'caption'"):
        make("hf_dataset", tmp_path, path=str(tmp_path / "d"), caption_column="caption").count()


# --- webdataset -----------------------------------------------------------------------------


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def write_shards(folder: Path) -> list[Path]:
    """Two img2dataset-style shards: jpg+txt+json in the first, png+json in the second, with flaws."""
    folder.mkdir(parents=True, exist_ok=True)
    first = []
    for i in range(5):
        key = f"{i:06d}"
        first += [(f"{key}.jpg", encoded(i, "JPEG")), (f"{key}.txt", f"txt caption {i}".encode()), (f"{key}.json", b'{"caption": "ignored"}')]
    second = []
    for i in range(5, 10):
        key = f"{i:06d}"
        if i != 8:  # key 8 lost its image: a reject, not a silently shorter dataset
            second.append((f"{key}.png", CORRUPT_JPEG if i == 7 else encoded(i)))
        second.append((f"{key}.json", json.dumps({"caption": f"json caption {i}", "url": "http://x"}).encode()))
    paths = [folder / "shard-0000.tar", folder / "shard-0001.tar"]
    write_tar(paths[0], first)
    write_tar(paths[1], second)
    return paths


def test_webdataset_two_shards(tmp_path: Path) -> None:
    write_shards(tmp_path / "wds")
    source = make("webdataset", tmp_path, shards=str(tmp_path / "wds" / "shard-{0000..0001}.tar"), max_side=None, size_multiple=1)
    assert source.count() == 10
    samples = check_slicing(source)
    assert samples[2].source_ref == "shard-0000.tar:000002.jpg" and samples[2].source_caption == "txt caption 2"
    assert samples[2].alive and np.abs(np.array(pixel(samples[2])) - color(2)).max() <= 8  # JPEG
    assert samples[6].source_caption == "json caption 6" and pixel(samples[6]) == color(6)
    assert samples[7].source_ref == "shard-0001.tar:000007.png" and samples[7].reject.reason.startswith("corrupt image")
    assert samples[8].source_ref == "shard-0001.tar:000008" and samples[8].reject.reason.startswith("missing image")
    assert sum(s.alive for s in samples) == 8


def test_webdataset_index_is_cached_and_invalidated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = write_shards(tmp_path / "wds")
    assert make("webdataset", tmp_path, shards=[str(tmp_path / "wds")]).count() == 10
    cached = sorted((tmp_path / "cache" / "webdataset-index").glob("*.json"))
    assert len(cached) == 2
    source_webdataset._INDEXES.clear()  # a new worker process: only the disk cache is left
    monkeypatch.setattr(source_webdataset, "index_tar", lambda handle: pytest.fail("indexed again"))
    assert make("webdataset", tmp_path, shards=[str(tmp_path / "wds")]).count() == 10
    monkeypatch.undo()
    write_tar(paths[1], [("000099.png", encoded(99))])  # the tar changed: its old index must not be used
    source_webdataset._INDEXES.clear()
    assert make("webdataset", tmp_path, shards=[str(tmp_path / "wds")]).count() == 6


def test_webdataset_from_s3(tmp_path: Path, s3: S3) -> None:  # noqa: F811
    prefix = s3.new_prefix()
    for path in write_shards(tmp_path / "wds"):
        s3.fs().put_file(str(path), f"{prefix}/{path.name}")
    source = make("webdataset", tmp_path, shards=[prefix], storage_options=s3.storage_options, max_side=None, size_multiple=1)
    assert source.count() == 10
    samples = source.load(3, 9)
    assert [s.source_ref for s in samples] == [
        "shard-0000.tar:000003.jpg", "shard-0000.tar:000004.jpg", "shard-0001.tar:000005.png",
        "shard-0001.tar:000006.png", "shard-0001.tar:000007.png", "shard-0001.tar:000008",
    ]
    assert [s.alive for s in samples] == [True, True, True, True, False, False]


def test_brace_expansion() -> None:
    assert source_records.expand_braces("s-{08..10}.tar") == ["s-08.tar", "s-09.tar", "s-10.tar"]
    assert source_records.expand_braces("a{1..2}/b{0..1}") == ["a1/b0", "a1/b1", "a2/b0", "a2/b1"]
    assert source_records.expand_braces("plain.tar") == ["plain.tar"]


# --- through the engine -----------------------------------------------------------------------


def test_build_from_parquet_keeps_source_refs_in_rejects(tmp_path: Path) -> None:
    from crispedit.engine import build
    from crispedit.recipe import load_plan

    write_parquet(tmp_path / "in.parquet", "struct", 0, 10, corrupt={3, 8})
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: pq\noutput: {dir: out, shard_size: 4}\n"
        f"source: {{kind: parquet, files: [{tmp_path / 'in.parquet'}], max_side: 32}}\n"
        "stages: [{kind: copy}]\n"
    )
    build(load_plan(recipe, out=tmp_path / "out"), runner="local", progress=False)
    rejects = pa.concat_tables([pq.read_table(p) for p in sorted((tmp_path / "out" / "rejects").glob("*.parquet"))])
    assert sorted(rejects.column("source_ref").to_pylist()) == ["in.parquet:row 3", "in.parquet:row 8"]
    rows = sum(pq.read_metadata(p).num_rows for p in (tmp_path / "out" / "data").glob("*.parquet"))
    assert rows == 8


# --- licences ---------------------------------------------------------------------------------

LICENSES = ["cc-by-nc-4.0", None, "cc-by-4.0", "  ", "cc0-1.0", "cc-by-nc-4.0"]


def test_a_licence_column_is_carried_into_source_license(tmp_path: Path) -> None:
    import datasets

    (tmp_path / "pq").mkdir()
    write_parquet(tmp_path / "pq" / "data.parquet", "struct", 0, len(LICENSES))
    table = pq.read_table(tmp_path / "pq" / "data.parquet").append_column("license", pa.array(LICENSES, pa.string()))
    pq.write_table(table, tmp_path / "pq" / "data.parquet", row_group_size=4)
    expected = ["cc-by-nc-4.0", "unknown", "cc-by-4.0", "unknown", "cc0-1.0", "cc-by-nc-4.0"]

    source = make("parquet", tmp_path, files=[str(tmp_path / "pq")], license_column="license", edits_per_image=2)
    assert "source_license" in source.outputs()
    samples = check_slicing(source)
    assert [s.source_license for s in samples] == [lic for lic in expected for _ in range(2)]
    defaulted = make("parquet", tmp_path, files=[str(tmp_path / "pq")], license_column="license", license="cc-by-sa-4.0")
    assert [s.source_license for s in defaulted.load(0, 4)] == ["cc-by-nc-4.0", "cc-by-sa-4.0", "cc-by-4.0", "cc-by-sa-4.0"]
    only_default = make("parquet", tmp_path, files=[str(tmp_path / "pq")], license="cc-by-4.0")
    assert {s.source_license for s in only_default.load(0, 6)} == {"cc-by-4.0"}
    undeclared = make("parquet", tmp_path, files=[str(tmp_path / "pq")])
    assert "source_license" not in undeclared.outputs() and {s.source_license for s in undeclared.load(0, 6)} == {None}
    with pytest.raises(ValueError, match="no column 'licence'"):
        make("parquet", tmp_path, files=[str(tmp_path / "pq")], license_column="licence").count()

    # hf_dataset: in place (Parquet) and from save_to_disk
    assert [s.source_license for s in make("hf_dataset", tmp_path, path=str(tmp_path / "pq"), license_column="license").load(0, 6)] == expected
    saved = datasets.Dataset.from_parquet(str(tmp_path / "pq" / "data.parquet"))
    saved.save_to_disk(str(tmp_path / "saved"))
    from_disk = make("hf_dataset", tmp_path, path=str(tmp_path / "saved"), license_column="license")
    assert from_disk._route()[0] == "arrow" and [s.source_license for s in from_disk.load(0, 6)] == expected

    # hf_dataset streamed: an image folder (not Parquet) whose card records the split's size
    folder = tmp_path / "imagefolder"
    folder.mkdir()
    with (folder / "metadata.jsonl").open("w", encoding="utf-8") as metadata:
        for i, lic in enumerate(LICENSES):
            (folder / f"{i}.png").write_bytes(encoded(i))
            metadata.write(json.dumps({"file_name": f"{i}.png", "text": f"c {i}", "license": lic}) + "\n")
    (folder / "README.md").write_text(
        "---\ndataset_info:\n  features:\n  - name: image\n    dtype: image\n  - name: text\n    dtype: string\n"
        "  - name: license\n    dtype: string\n  splits:\n  - name: train\n    num_examples: 6\n---\n", encoding="utf-8")
    streamed = make("hf_dataset", tmp_path, path=str(folder), image_column="image", caption_column="text", license_column="license")
    assert streamed._route()[0] == "stream" and streamed.count() == 6
    rows = streamed.load(0, 6)
    assert [s.source_license for s in rows] == expected and [s.source_caption for s in rows] == [f"c {i}" for i in range(6)]
    assert all(s.alive and s.source_image is not None and s.source_image.shape[2] == 3 for s in rows)
    assert [s.source_license for s in streamed.load(2, 5)] == expected[2:5]
    prepared = make("hf_dataset", tmp_path, path=str(folder), image_column="image", caption_column="text", license_column="license",
                    streaming=False)
    assert prepared._route()[0] == "prepared" and [s.source_license for s in prepared.load(0, 6)] == expected
    assert [s.source_image.tobytes() for s in prepared.load(0, 6)] == [s.source_image.tobytes() for s in rows]
    from crispedit.core.paths import UnsafePathError

    with pytest.raises(UnsafePathError, match="outside"):  # the folder's own files only
        streamed._cell_rules("stream").locate(str(tmp_path / "pq" / "data.parquet"))

    # webdataset: a field of KEY.json
    members = []
    for i, lic in enumerate(LICENSES):
        fields = {"caption": f"c {i}", **({"license": lic} if lic is not None else {})}
        members += [(f"{i:06d}.png", encoded(i)), (f"{i:06d}.json", json.dumps(fields).encode())]
    write_tar(tmp_path / "wds.tar", members)
    tars = make("webdataset", tmp_path, shards=str(tmp_path / "wds.tar"), license_column="license")
    assert [s.source_license for s in tars.load(0, 6)] == expected
