"""Outputs on a local disk and on S3 (moto's server through s3fs): same API, same guarantees."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from crispedit.core.paths import UnsafePathError
from crispedit.core.storage import TMP_PREFIX, Output, open_input, relative_key
from crispedit.engine.cluster import UnreachableOutputError, check_output_reachable
from tests.helpers.s3_server import S3, s3  # noqa: F401  (the fixture)


def exercise(out: Output) -> None:
    """What ShardStore relies on, run identically against every kind of storage."""
    assert out.size("data/a.parquet") is None and not out.exists("data/a.parquet")
    assert out.list("data", "*.parquet") == []
    assert out.write_bytes("data/a.parquet", b"abc") == 3
    assert out.write_bytes(out.join("data", "b.parquet"), memoryview(b"12345")) == 5
    out.write_text("_commits/commit-0.json", '{"rows": 1}')
    assert out.read_bytes("data/a.parquet") == b"abc"
    assert out.size("data/b.parquet") == 5 and out.exists("_commits/commit-0.json")
    assert out.size("data") is None, "a directory or prefix is not a file"
    assert out.list("data", "*.parquet") == ["data/a.parquet", "data/b.parquet"]
    assert out.list("_commits", "commit-*.json") == ["_commits/commit-0.json"]
    out.write_bytes("data/a.parquet", b"replaced")
    assert out.read_bytes("data/a.parquet") == b"replaced" and out.size("data/a.parquet") == 8
    out.remove("data/a.parquet")
    out.remove("data/a.parquet")  # removing what is gone is fine: reruns do it
    assert out.list("data") == ["data/b.parquet"]
    with pytest.raises(FileNotFoundError):
        out.read_bytes("data/a.parquet")
    for bad in ("../x", "data/../../x", "/etc/passwd", "a\\b", "a\x00b"):
        with pytest.raises(UnsafePathError):
            out.write_bytes(bad, b"no")


def test_local_output(tmp_path: Path) -> None:
    out = Output(tmp_path / "out")
    assert out.is_local and out.url == str((tmp_path / "out").resolve())
    exercise(out)
    names = sorted(p.name for p in (tmp_path / "out").rglob("*"))
    assert not [n for n in names if n.startswith(TMP_PREFIX)], "no temporaries survive a write"
    assert out.url_of("data/b.parquet") == str(tmp_path / "out" / "data" / "b.parquet")


def test_local_leftovers_of_a_killed_writer_are_invisible_and_removed(tmp_path: Path) -> None:
    out = Output(tmp_path)
    out.write_bytes("data/a.parquet", b"abc")
    stray = tmp_path / "data" / f"{TMP_PREFIX}a.parquet.123.deadbeef"
    stray.write_bytes(b"half")
    assert out.list("data") == ["data/a.parquet"]
    assert out.list("data", f"{TMP_PREFIX}*") == [f"data/{stray.name}"]
    assert out.remove_temporaries("data", "_commits") == 1
    assert not stray.exists() and out.read_bytes("data/a.parquet") == b"abc"


def test_local_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside, root / "data")
    with pytest.raises(UnsafePathError):
        Output(root).write_bytes("data/x.parquet", b"no")
    assert not any(outside.iterdir())


def test_relative_key() -> None:
    assert relative_key("data", "x.parquet") == "data/x.parquet"
    assert relative_key("./data/", "", "x") == "data/x"
    assert relative_key() == ""
    with pytest.raises(UnsafePathError):
        relative_key("data", "..")


def test_s3_output(s3: S3) -> None:  # noqa: F811
    prefix = s3.new_prefix()
    out = Output(prefix, s3.storage_options)
    assert not out.is_local and out.url == prefix
    exercise(out)
    # Nothing but final names was ever created: object stores get no temporaries and no renames.
    keys = sorted(k.removeprefix(out.root + "/") for k in s3.fs().find(out.root))
    assert keys == ["_commits/commit-0.json", "data/b.parquet"]
    assert out.url_of("data/b.parquet") == f"{prefix}/data/b.parquet"
    assert out.remove_temporaries() == 0


def test_s3_sees_writes_made_by_other_processes(s3: S3) -> None:  # noqa: F811
    """Workers write shards, the driver lists them: the driver must not answer from a stale listing cache."""
    out = Output(s3.new_prefix(), s3.storage_options)
    assert out.list("_commits") == [] and out.size("_commits/c1.json") is None
    other = s3.fs()  # another client, as a Ray worker would have
    other.pipe_file(f"{out.root}/_commits/c1.json", b"{}")
    assert out.list("_commits") == ["_commits/c1.json"]
    assert out.size("_commits/c1.json") == 2
    other.rm_file(f"{out.root}/_commits/c1.json")
    assert out.size("_commits/c1.json") is None and out.list("_commits") == []


def test_open_input_local_and_s3(tmp_path: Path, s3: S3) -> None:  # noqa: F811
    (tmp_path / "f.bin").write_bytes(b"local")
    with open_input(tmp_path / "f.bin") as handle:
        assert handle.read() == b"local"
    url = f"{s3.new_prefix()}/f.bin"
    s3.fs().pipe_file(url, b"remote")
    with open_input(url, s3.storage_options) as handle:
        assert handle.read() == b"remote"


NODE = {"Alive": True, "NodeID": "a" * 56, "NodeManagerAddress": "10.0.0.1", "NodeManagerHostname": "head"}


def test_multi_node_refuses_a_local_output(tmp_path: Path) -> None:
    two = [NODE, {**NODE, "NodeID": "b" * 56, "NodeManagerAddress": "10.0.0.2", "NodeManagerHostname": "worker-1"}]
    with pytest.raises(UnreachableOutputError) as refused:
        check_output_reachable(str(tmp_path / "out"), two, [])
    message = str(refused.value)
    assert "2 alive nodes" in message and "head" in message and "worker-1" in message
    assert "s3://" in message and "output.shared: true" in message
    # The fixes the message names are accepted:
    check_output_reachable("s3://bucket/run", two, [])
    check_output_reachable(str(tmp_path / "nfs" / "out"), two, [str(tmp_path / "nfs")])
    check_output_reachable(str(tmp_path / "nfs"), two, [str(tmp_path / "nfs")])
    # A path that merely starts with the same letters is not inside the shared one.
    with pytest.raises(UnreachableOutputError):
        check_output_reachable(str(tmp_path / "nfs2"), two, [str(tmp_path / "nfs")])


def test_single_live_node_accepts_a_local_output(tmp_path: Path) -> None:
    dead = {**NODE, "Alive": False, "NodeID": "c" * 56}
    check_output_reachable(str(tmp_path / "out"), [NODE, dead], [])
    check_output_reachable(str(tmp_path / "out"), [NODE], [])
