"""Publishing: the repository tree, the dataset card, Hub-shaped Parquet, and the upload path.

The upload runs through huggingface_hub's real client against tests/helpers/hub_server.py on
127.0.0.1 (with Xet disabled, the client takes the LFS path that server implements),
with 429s, a moved branch (412) and a failing store injected.
"""

from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crispedit.cli import main
from crispedit.core.hub_parquet import hub_shape_problems, row_group_sizes, write_hub_parquet
from crispedit.publish.hub import PublishError, RetryPolicy, TreeFile, copy_tree, plan_tree, upload_tree
from tests.helpers.hub_server import FakeHub
from tests.publish.conftest import TOKEN


@pytest.fixture
def build(quickstart_dataset: Path, tmp_path: Path) -> Path:
    """A private copy of the session's quickstart build (publish writes OUT/.cache/)."""
    out = tmp_path / "build"
    shutil.copytree(quickstart_dataset, out, ignore=shutil.ignore_patterns("preview", ".cache"))
    return out


def _on_server(server: FakeHub, repo_id: str, tree) -> None:
    files = server.files(repo_id)
    for item in tree:
        assert item.path in files, item.path
        assert server.content(repo_id, item.path) == item.local.read_bytes(), item.path


# --- the tree and the card -------------------------------------------------------------------


def test_dry_run_tree_loads_through_the_cards_configs(build: Path, tmp_path: Path) -> None:
    import datasets
    from PIL import Image

    target = tmp_path / "tree"
    assert main(["publish", str(build), "--dry-run", str(target), "--repo-id", "org/quick"]) == 0
    files = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())
    assert "README.md" in files and "recipe.yaml" in files and "summary.json" in files
    assert any(f.startswith("assets/hist-") and f.endswith(".png") for f in files)
    assert not [f for f in files if f.startswith("_commits/") or "/.tmp-" in f or f.startswith(".cache/") or f.endswith(".log")]

    summary = __import__("json").loads((build / "summary.json").read_text())
    pairs = datasets.load_dataset(str(target), split="train")
    assert pairs.num_rows == summary["rows"] > 0
    assert isinstance(pairs.features["source_image"], datasets.Image)
    assert isinstance(pairs[0]["source_image"], Image.Image) and isinstance(pairs[0]["target_image"], Image.Image)
    rejects = datasets.load_dataset(str(target), "rejects", split="train")
    assert rejects.num_rows == summary["rejects"] > 0
    assert {"id", "stage", "reason"} <= set(rejects.column_names)
    for path in target.glob("*/*.parquet"):
        assert hub_shape_problems(pq.read_metadata(path)) == []


def test_card_parses_with_its_metadata(build: Path, tmp_path: Path) -> None:
    from huggingface_hub import DatasetCard

    tree = plan_tree(build, repo_id="org/quick", staging=tmp_path / "stage")
    card = DatasetCard.load(next(item.local for item in tree if item.path == "README.md"))
    data = card.data
    assert data.license == "other"  # the quickstart recipe declares none
    assert data.task_categories == ["image-to-image"]
    assert "image-editing" in data.tags and data.size_categories == ["n<1K"]
    configs = {c["config_name"]: c["data_files"] for c in data.configs}
    assert configs == {"default": [{"split": "train", "path": "data/train-*"}], "rejects": [{"split": "train", "path": "rejects/rejects-*"}]}
    infos = {i["config_name"]: i for i in data.dataset_info}
    features = {f["name"]: f for f in infos["default"]["features"]}
    assert features["source_image"]["dtype"] == "image" and features["pixel_l1"]["dtype"] == "float64"
    assert infos["default"]["splits"][0]["num_examples"] == sum(pq.read_metadata(i.local).num_rows for i in tree if i.path.startswith("data/"))
    text = card.text
    for heading in ("## Load it", "## Example pairs", "## Columns", "## Pipeline", "## Counts", "## Score distributions", "## Citation"):
        assert heading in text, heading
    assert "pixel_l1 in [0.01, 0.9]" in text  # the basic filter's kept range, from the recipe
    assert 'load_dataset("org/quick", "rejects", split="train")' in text
    paths = {item.path for item in tree}
    for link in __import__("re").findall(r"\]\((assets/[^)]+)\)", text):
        assert link in paths, link


def test_incomplete_build_is_refused_unless_partial(build: Path, tmp_path: Path) -> None:
    markers = sorted((build / "_commits").glob("commit-*.json"))
    markers[-1].unlink()
    with pytest.raises(PublishError, match="incomplete"):
        plan_tree(build, staging=tmp_path / "a")
    assert main(["publish", str(build), "--dry-run", str(tmp_path / "refused")]) == 2
    tree = plan_tree(build, partial=True, staging=tmp_path / "b")
    rows = sum(pq.read_metadata(i.local).num_rows for i in tree if i.path.startswith("data/"))
    import json

    assert rows == sum(json.loads(m.read_text())["rows"] for m in markers[:-1])
    assert "Partial build" in next(i.local for i in tree if i.path == "README.md").read_text()


#: Text a model or a recipe author might write that Markdown or HTML would read as markup.
HOSTILE = [
    "<script>alert('card')</script>",
    '<img src="https://evil.example/pixel.png" onerror="alert(1)">',
    "![tracker](https://evil.example/t.png)",
    "[click me](javascript:alert(1))",
    '<a href="javascript:alert(2)">click</a>',
    "make it **bold** | and _split_ the | table",
    "see https://evil.example/x and www.evil.example",
    "`code` and ``more`` <b>bold</b> &amp; &lt;done&gt;",
    "# not a heading\n---\n[ref]: javascript:alert(3)",
]


class _Rendered(__import__("html.parser").parser.HTMLParser):
    """The tags and attributes a renderer made, and the text of each table cell."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.cells: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "td":
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self.cells.append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def test_untrusted_text_in_the_card_renders_as_text(build: Path, tmp_path: Path) -> None:
    """Instructions, task names and the recipe's description, rendered by a real Markdown renderer, make no markup."""
    import json

    from markdown_it import MarkdownIt

    marker = sorted((build / "_commits").glob("commit-*.json"))[0]
    data = json.loads(marker.read_text())
    path = build / "data" / f"{data['shard']}.parquet"
    table = pq.read_table(path)
    rows = table.num_rows
    hostile = [HOSTILE[i % len(HOSTILE)] for i in range(rows)]
    table = table.set_column(table.schema.get_field_index("instruction"), "instruction", pa.array(hostile, pa.string()))
    table = table.set_column(table.schema.get_field_index("task"), "task", pa.array(["<i>task</i>|x"] * rows, pa.string()))
    write_hub_parquet(table, str(path))
    data["data_bytes"] = path.stat().st_size
    marker.write_text(json.dumps(data))
    recipe = (build / "recipe.yaml").read_text()
    (build / "recipe.yaml").write_text(recipe.replace("description: ", "description: |-\n  <iframe src=\"https://evil.example\"></iframe> "
                                                      "[home](javascript:alert(4))\n\n  second paragraph\n_was: ", 1))
    assert "<iframe" in __import__("yaml").safe_load((build / "recipe.yaml").read_text())["description"]

    tree = plan_tree(build, repo_id="org/quick", examples=100, staging=tmp_path / "stage")
    card = next(item.local for item in tree if item.path == "README.md").read_text()
    body = card.split("\n---\n", 1)[1]
    html = MarkdownIt("commonmark", {"html": True}).enable("table").render(body)
    page = _Rendered()
    page.feed(html)
    allowed = {"h1", "h2", "h3", "p", "table", "thead", "tbody", "tr", "th", "td", "code", "pre", "img", "blockquote", "strong", "em"}
    assert {tag for tag, _ in page.tags} <= allowed, {tag for tag, _ in page.tags} - allowed
    for tag, attrs in page.tags:
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)
        if tag == "img":
            assert attrs["src"].startswith("assets/"), attrs
        assert "javascript:" not in (attrs.get("href") or "") + (attrs.get("src") or "")
    assert "<a " not in html and "<script" not in html and "<iframe" not in html
    assert len(set(hostile)) >= 6
    for text in set(hostile):  # what renders is the text itself (line breaks read as spaces in a table cell)
        assert " ".join(text.split()) in page.cells, text
    assert "<i>task</i>|x" in page.cells
    assert "<iframe src=\"https://evil.example\"></iframe> [home](javascript:alert(4))" in __import__("html").unescape(html)


# --- Hub-shaped Parquet -----------------------------------------------------------------------


def _noise_png(rng: np.random.Generator, side: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buffer, format="PNG", compress_level=0)
    return buffer.getvalue()


def test_row_groups_of_a_1024px_build_stay_under_the_byte_limit(tmp_path: Path) -> None:
    from datasets import Features, Image, Value

    rng = np.random.default_rng(0)
    features = Features({"id": Value("string"), "source_image": Image(), "target_image": Image(), "instruction": Value("string")})
    rows = [{"id": str(i), "source_image": {"bytes": _noise_png(rng, 1024), "path": f"{i}-s.png"},
             "target_image": {"bytes": _noise_png(rng, 1024), "path": f"{i}-t.png"}, "instruction": "x" * i} for i in range(7)]
    table = pa.Table.from_pylist(rows, schema=features.arrow_schema)
    pair_bytes = table.nbytes / table.num_rows  # ~6.3 MB: two 1024 px noise PNGs
    limit = int(2.5 * pair_bytes)
    assert row_group_sizes(table, limit) == [2, 2, 2, 1]
    path = tmp_path / "shard.parquet"
    write_hub_parquet(table, str(path), max_bytes=limit)
    metadata = pq.read_metadata(path)
    assert metadata.num_rows == 7 and metadata.num_row_groups == 4
    for i in range(metadata.num_row_groups):
        assert metadata.row_group(i).total_byte_size <= limit
    assert hub_shape_problems(metadata, limit) == []
    chunk = {metadata.row_group(0).column(j).path_in_schema: metadata.row_group(0).column(j) for j in range(metadata.num_columns)}
    assert chunk["source_image.bytes"].compression == "UNCOMPRESSED" and chunk["instruction"].compression == "ZSTD"
    assert pq.read_table(path).equals(table)

    # an old-style shard (64 rows per group, no page index) is re-packed for publishing
    old = tmp_path / "old.parquet"
    pq.write_table(table, old, compression="zstd", row_group_size=64)
    assert hub_shape_problems(pq.read_metadata(old), limit)


def test_publish_repacks_to_the_row_group_limit(build: Path, tmp_path: Path) -> None:
    limit = 400_000
    tree = plan_tree(build, row_group_bytes=limit, staging=tmp_path / "stage")
    shards = [i for i in tree if i.path.endswith(".parquet")]
    assert shards and all(i.local.is_relative_to(tmp_path / "stage") for i in shards)
    for item in shards:
        metadata = pq.read_metadata(item.local)
        for g in range(metadata.num_row_groups):
            group = metadata.row_group(g)
            assert group.num_rows == 1 or group.total_byte_size <= limit


# --- uploads ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_upload_lands_every_file_through_429_and_412(build: Path, hub: FakeHub, tmp_path: Path) -> None:
    from huggingface_hub import HfApi

    tree = plan_tree(build, repo_id="org/quick", staging=tmp_path / "stage")
    hub.commit_429 = 2
    hub.preupload_429 = 1  # huggingface_hub's own backoff handles this one
    hub.retry_after = "7"
    hub.foreign_commit_before = {3}  # another writer commits just before our third commit
    waits: list[float] = []
    report = upload_tree(tree, "org/quick", api=HfApi(), batch_files=4, policy=RetryPolicy(sleep=waits.append))

    _on_server(hub, "org/quick", tree)
    assert "NOTES-3.md" in hub.files("org/quick")  # the other writer's file is kept
    assert report.rate_limited == 2 and waits.count(7.0) == 2  # Retry-After honoured
    assert report.conflicts == 1
    lfs_files = [i for i in tree if i.path.endswith((".parquet", ".png", ".jpg"))]
    assert set(hub.lfs_puts) == {hashlib.sha256(i.local.read_bytes()).hexdigest() for i in lfs_files}
    assert hub.repos["org/quick"].log[-1].startswith("Upload dataset with crispedit")
    assert sorted(report.uploaded) == sorted(i.path for i in tree)

    # a rerun, with the card and assets generated again, finds everything in place
    commits, puts = len(hub.repos["org/quick"].log), hub.requests["lfs_put"]
    again = upload_tree(plan_tree(build, repo_id="org/quick", staging=tmp_path / "stage"), "org/quick", api=HfApi())
    assert again.uploaded == [] and again.commits == 0 and len(hub.repos["org/quick"].log) == commits
    assert hub.requests["lfs_put"] == puts


@pytest.mark.parametrize("header, low, high", [("garbage", 1.0, 2.0), ("", 1.0, 2.0), ("3", 3.0, 3.0),
                                               ("Wed, 99 Foo 2024 25:61:00 GMT", 1.0, 2.0), ("99999999999", 3600.0, 3600.0)])
def test_a_429_with_any_retry_after_waits_and_commits(header: str, low: float, high: float, hub: FakeHub, tmp_path: Path) -> None:
    """The Hub's Retry-After goes through the same parser as the LLM client's: unreadable means our backoff, never a failure."""
    from huggingface_hub import HfApi

    card = tmp_path / "README.md"
    card.write_text("---\nlicense: other\n---\n# a card\n")
    hub.commit_429, hub.retry_after = 1, header
    waits: list[float] = []
    report = upload_tree([TreeFile("README.md", card)], "org/retry", api=HfApi(), policy=RetryPolicy(sleep=waits.append))
    assert report.commits == 1 and report.rate_limited == 1 and "README.md" in hub.files("org/retry")
    assert len(waits) == 1 and low <= waits[0] <= high, waits


def test_a_repository_crispedit_did_not_publish_keeps_its_files(build: Path, hub: FakeHub, tmp_path: Path) -> None:
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi()
    api.create_repo("org/theirs", repo_type="dataset")
    theirs = tmp_path / "theirs.csv"
    theirs.write_text("a,b\n1,2\n")
    api.create_commit("org/theirs", [CommitOperationAdd("data/theirs.csv", str(theirs))], commit_message="their data",
                      repo_type="dataset")
    tree = plan_tree(build, repo_id="org/theirs", staging=tmp_path / "stage")
    with pytest.raises(PublishError, match="did not publish"):
        upload_tree(tree, "org/theirs", api=api)
    assert "data/theirs.csv" in hub.files("org/theirs")
    report = upload_tree(tree, "org/theirs", api=api, overwrite=True)
    assert report.deleted == ["data/theirs.csv"] and "data/theirs.csv" not in hub.files("org/theirs")


def test_interrupted_upload_resumes_with_only_the_missing_files(build: Path, hub: FakeHub, tmp_path: Path) -> None:
    from huggingface_hub import HfApi

    tree = plan_tree(build, repo_id="org/quick", staging=tmp_path / "stage")
    hub.fail_lfs_after = 5
    with pytest.raises(Exception):  # noqa: B017 - the store's 507 surfaces through the client's upload threads
        upload_tree(tree, "org/quick", api=HfApi(), batch_files=3)
    first_puts = list(hub.lfs_puts)
    first_commits = list(hub.committed)
    assert len(first_puts) == 5 and 0 < len(first_commits) < len(tree)

    hub.fail_lfs_after = None
    report = upload_tree(tree, "org/quick", api=HfApi(), batch_files=3)
    second_puts = hub.lfs_puts[len(first_puts):]
    second_commits = hub.committed[len(first_commits):]
    assert not set(second_puts) & set(first_puts)  # no byte sent twice
    assert not set(second_commits) & set(first_commits)
    assert sorted(report.uploaded) == sorted(second_commits)
    assert set(report.already_there) == set(first_commits)
    _on_server(hub, "org/quick", tree)


def test_cli_publishes_with_the_token_from_the_environment(build: Path, hub: FakeHub, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["publish", str(build), "--repo-id", "org/cli", "--no-rejects"]) == 0
    output = capsys.readouterr()
    assert TOKEN not in output.out + output.err
    files = hub.files("org/cli")
    assert "README.md" in files and not any(p.startswith("rejects/") for p in files)
    assert "config_name: rejects" not in hub.content("org/cli", "README.md").decode()


def test_cli_without_a_token_says_how_to_get_one(build: Path, hub: FakeHub, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.delenv("HF_TOKEN")
    assert main(["publish", str(build), "--repo-id", "org/none"]) == 2
    assert "HF_TOKEN" in capsys.readouterr().err
    assert "org/none" not in hub.repos


def test_to_url_copies_the_same_tree(build: Path, tmp_path: Path) -> None:
    tree = plan_tree(build, staging=tmp_path / "stage")
    mirror = tmp_path / "mirror"
    # an earlier tree of this build held one more shard: the marker names it, so a re-publish removes it
    extra = tmp_path / "extra.parquet"
    extra.write_bytes(b"old")
    first = copy_tree([*tree, TreeFile("data/train-99999999-99999999.parquet", extra)], f"file://{mirror}", build=build)
    assert (mirror / "data" / "train-99999999-99999999.parquet").exists() and len(first["copied"]) == len(tree) + 1
    result = copy_tree(tree, f"file://{mirror}", build=build)
    assert not (mirror / "data" / "train-99999999-99999999.parquet").exists()
    assert [Path(p).name for p in result["deleted"]] == ["train-99999999-99999999.parquet"]
    for item in tree:
        assert (mirror / item.path).read_bytes() == item.local.read_bytes()
    again = copy_tree(tree, f"file://{mirror}", build=build)
    assert sorted(again["kept"]) == sorted(i.path for i in tree if i.path.endswith(".parquet"))
    # a file crispedit did not write: the tree of another build is refused, even with overwrite, until it is moved away
    (mirror / "data" / "mine.parquet").write_bytes(b"a user's own file")
    with pytest.raises(PublishError, match="did not write"):
        copy_tree(tree, f"file://{mirror}", overwrite=True)
    assert (mirror / "data" / "mine.parquet").read_bytes() == b"a user's own file"


def test_rejects_with_image_and_score_columns(build: Path, tmp_path: Path) -> None:
    """Rejects that carry the data's HF features (images, scores) publish and load as images too."""
    import json

    import datasets
    from datasets import Features, Image, Value
    from PIL import Image as PILImage

    buffer = io.BytesIO()
    PILImage.new("RGB", (48, 32), (200, 30, 30)).save(buffer, format="PNG")
    features = Features({"id": Value("string"), "index": Value("int64"), "source_ref": Value("string"), "stage": Value("string"),
                         "reason": Value("string"), "parent_id": Value("string"), "source_image": Image(), "pixel_l1": Value("float64")})
    for marker in sorted((build / "_commits").glob("commit-*.json")):
        data = json.loads(marker.read_text())
        path = build / "rejects" / f"rejects-{data['shard'].removeprefix('train-')}.parquet"
        old = pq.read_table(path).to_pylist()
        rows = [{**{k: r.get(k) for k in ("id", "index", "source_ref", "stage", "reason")}, "parent_id": None,
                 "source_image": {"bytes": buffer.getvalue(), "path": None}, "pixel_l1": 0.001} for r in old]
        write_hub_parquet(pa.Table.from_pylist(rows, schema=features.arrow_schema), str(path))
        data["rejects_bytes"] = path.stat().st_size
        marker.write_text(json.dumps(data))

    target = tmp_path / "tree"
    assert main(["publish", str(build), "--dry-run", str(target)]) == 0
    rejects = datasets.load_dataset(str(target), "rejects", split="train")
    assert rejects.num_rows > 0 and isinstance(rejects[0]["source_image"], PILImage.Image)
    assert rejects[0]["pixel_l1"] == 0.001 and "parent_id" in rejects.column_names
    text = (target / "README.md").read_text()
    assert "| `source_image` | Image |" in text.split("### `rejects`")[1]

    from crispedit.publish.preview import write_preview

    preview = write_preview(build, pairs=3)
    page = json.loads((preview.folder / "data.js").read_text().removeprefix("window.CRISPEDIT_PREVIEW = ").rstrip().rstrip(";"))
    example = page["reject_groups"][0]["examples"][0]
    assert (preview.folder / example["images"]["source"]).is_file() and example["scores"] == {"pixel_l1": 0.001}


def test_citations_follow_the_configured_stages(build: Path) -> None:
    from crispedit.ops.build_info import StageInfo, read_build
    from crispedit.publish.card import cited_methods

    info = read_build(build)
    assert [m.name for m in cited_methods(info)] == ["EditMGT"]  # the quickstart's crispedit2m taxonomy
    info.stages = [StageInfo("instruct", "instruct", {"taxonomy": "editworld"}), StageInfo("ground", "ground", {}),
                   StageInfo("clip", "clip", {}, cites=["InstructPix2Pix"])]
    assert [m.name for m in cited_methods(info)] == ["InstructPix2Pix", "Emu Edit", "UltraEdit", "EditWorld"]
    info.stages = [StageInfo("classical", "classical", {}), StageInfo("pixel_change", "pixel_change", {"min_l1": 0.01})]
    assert cited_methods(info) == []
