"""Never lose or leak a user's data: what docs/recipes.md ("Trust") promises, tried with hostile and careless inputs.

* every command that writes a folder refuses a user's folder, the build it reads (and folders
  in or around it, by any spelling, through symlinks too), and a file; it replaces an earlier
  output of its own kind only when asked, deletes only what that output's marker names, and
  an interruption leaves the old output whole;
* a recipe cannot choose where the output root is, and its ``output.dir`` stays inside it by
  every spelling;
* recipes that would exhaust the machine (alias bombs, recursion, deep nesting, huge counts)
  are refused at once with the file and line;
* malformed Parquet sources and other mistakes are one line, exit 2, no traceback, and
  committed shards are left as they were.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crispedit.cli import main
from crispedit.core.presets import BUNDLED
from tests.helpers.recipes import QUICKSTART, write_recipe

BASIC = BUNDLED / "filters" / "basic.yaml"


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (symlinks as their target text), to compare before and after."""
    out = {}
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        if path.is_symlink():
            out[name] = b"-> " + os.readlink(path).encode()
        elif path.is_file():
            out[name] = path.read_bytes()
    return out


@pytest.fixture(scope="module")
def built(quickstart_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the quickstart build (tests that change it make their own)."""
    out = tmp_path_factory.mktemp("safety") / "build"
    shutil.copytree(quickstart_dataset, out)
    return out


def user_folder(parent: Path) -> Path:
    """A user's folder that happens to use the names of a crispedit layout."""
    mine = parent / "mine"
    for name, data in {"notes.txt": b"my notes", "data/keep.parquet": b"not ours", "rejects/r.parquet": b"mine too",
                       "assets/logo.png": b"\x89PNG", "README.md": b"# my project"}.items():
        (mine / name).parent.mkdir(parents=True, exist_ok=True)
        (mine / name).write_bytes(data)
    return mine


COMMANDS: dict[str, Callable[[Path, str], list[str]]] = {
    "preview": lambda out, target: ["preview", str(out), "--folder", target, "--pairs", "2"],
    "refilter": lambda out, target: ["refilter", str(out), "--filters", str(BASIC), "--to", target, "--no-plots"],
    "dedupe": lambda out, target: ["dedupe", str(out), "--to", target],
    "publish --dry-run": lambda out, target: ["publish", str(out), "--dry-run", target, "--examples", "1"],
    "publish --to": lambda out, target: ["publish", str(out), "--to", target, "--examples", "1"],
}

#: Targets no command may write to, each as (name, make(build, scratch) -> target text).
BAD_TARGETS: dict[str, Callable[[Path, Path], str]] = {
    "a user's folder": lambda out, tmp: str(user_folder(tmp)),
    "the build itself": lambda out, tmp: str(out),
    "the build's data/": lambda out, tmp: str(out / "data"),
    "a new folder inside the build": lambda out, tmp: str(out / "new"),
    "the folder around the build": lambda out, tmp: str(out.parent),
    "the build as file://": lambda out, tmp: f"file://{out}",
    "the build as local://": lambda out, tmp: f"local://{out}",
    "the build through ..": lambda out, tmp: f"{out}/data/../../{out.name}",
    "a symlink to the build": lambda out, tmp: _link(tmp / "link", out),
    "a symlink to a user's folder": lambda out, tmp: _link(tmp / "link", user_folder(tmp)),
    "a file": lambda out, tmp: _file(tmp / "file.txt"),
    "an fsspec chain": lambda out, tmp: f"simplecache::file://{tmp / 'new'}",
}


def _link(link: Path, target: Path) -> str:
    link.symlink_to(target)
    return str(link)


def _file(path: Path) -> str:
    path.write_text("a file of mine")
    return str(path)


@pytest.mark.parametrize("target", list(BAD_TARGETS))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_no_command_writes_where_it_must_not(command: str, target: str, built: Path, tmp_path: Path, capsys) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    where = BAD_TARGETS[target](built, scratch)
    before_build, before_scratch = snapshot(built), snapshot(scratch)
    capsys.readouterr()
    assert main(COMMANDS[command](built, where)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert snapshot(built) == before_build
    assert snapshot(scratch) == before_scratch


@pytest.mark.parametrize("command", list(COMMANDS))
def test_an_earlier_output_is_replaced_only_when_asked_and_only_its_own_files(command: str, built: Path, tmp_path: Path,
                                                                             capsys) -> None:
    target = tmp_path / "result"
    assert main(COMMANDS[command](built, str(target))) == 0
    first = snapshot(target)
    assert ".crispedit-output.json" in first
    again = COMMANDS[command](built, str(target))
    if command == "publish --to":  # a sync of the same build's tree: no --overwrite needed, nothing lost
        assert main(again) == 0 and snapshot(target) == first
    elif command == "refilter" or command == "dedupe":  # the same request again: the same bytes
        assert main(again) == 0 and snapshot(target).keys() == first.keys()
    else:
        capsys.readouterr()
        assert main(again) == 2 and "--overwrite" in capsys.readouterr().err
        assert snapshot(target) == first
    assert main([*again, "--overwrite"]) == 0
    assert not [p for p in tmp_path.iterdir() if ".crispedit-" in p.name]  # nothing left beside it
    (target / "notes-of-mine.txt").write_text("mine")  # a user adds a file to the output: it is theirs now
    before = snapshot(target)
    capsys.readouterr()
    assert main([*again, "--overwrite"]) == 2 and "did not write" in capsys.readouterr().err
    assert snapshot(target) == before


def test_an_interrupted_replacement_leaves_the_old_output_whole(built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import crispedit.publish.preview as preview

    target = tmp_path / "pages"
    assert main(COMMANDS["preview"](built, str(target))) == 0
    old = snapshot(target)

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # the user presses ^C half way through writing the new pages

    monkeypatch.setattr(preview, "_copy_static", crash)
    with pytest.raises(KeyboardInterrupt):
        main([*COMMANDS["preview"](built, str(target)), "--overwrite"])
    assert snapshot(target) == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pages"]


def test_a_crash_between_the_two_renames_is_put_right_by_the_next_run(built: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import crispedit.core.outputs as outputs

    target = tmp_path / "tree"
    assert main(COMMANDS["publish --dry-run"](built, str(target))) == 0
    old = snapshot(target)
    real = os.rename
    calls: list[str] = []

    def rename(src: str | Path, dst: str | Path) -> None:
        calls.append(str(dst))
        if len(calls) >= 2:  # the old tree is set aside, then the process dies: nothing more happens
            raise SystemExit("killed")
        real(src, dst)

    monkeypatch.setattr(outputs.os, "rename", rename)
    with pytest.raises(SystemExit):
        outputs.swap_in(_staged_copy(target, tmp_path), target)
    monkeypatch.setattr(outputs.os, "rename", real)
    assert not target.exists()  # the old tree is beside it, whole
    assert main([*COMMANDS["publish --dry-run"](built, str(target)), "--overwrite"]) == 0
    assert snapshot(target).keys() == old.keys()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tree"]


def _staged_copy(target: Path, parent: Path) -> Path:
    staging = parent / f".{target.name}.crispedit-new-test"
    shutil.copytree(target, staging)
    return staging


# --- build --out ------------------------------------------------------------------------------------


@pytest.fixture()
def photos_recipe(tmp_path: Path) -> Path:
    """A recipe whose source is a folder of real photographs (scikit-image's), in tmp_path/photos."""
    from skimage import data as skdata

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("astronaut.png", "coffee.png", "chelsea.png"):
        shutil.copy(Path(skdata.data_dir) / name, photos / name)
    (tmp_path / "filters").mkdir()
    shutil.copy(BASIC, tmp_path / "filters" / "basic.yaml")
    text = QUICKSTART.read_text().replace("kind: skimage", f"kind: folder\n  folder: {photos}").replace("shard_size: 8", "shard_size: 2")
    return write_recipe(tmp_path, text.replace("runner: ray", "runner: local"))


def _build(recipe: Path, out: str, *extra: str) -> int:
    return main(["build", str(recipe), "--out", out, "--runner", "local", "--no-progress", *extra])


@pytest.mark.parametrize("where", ["photos", "photos/sub", ".", "user", "file", "link-to-photos"])
def test_a_build_never_writes_over_its_source_or_a_users_folder(photos_recipe: Path, where: str, capsys) -> None:
    tmp = photos_recipe.parent
    targets = {"photos": tmp / "photos", "photos/sub": tmp / "photos" / "sub", ".": tmp, "user": user_folder(tmp),
               "file": Path(_file(tmp / "file.txt")), "link-to-photos": Path(_link(tmp / "link", tmp / "photos"))}
    before = snapshot(tmp)
    capsys.readouterr()
    assert _build(photos_recipe, str(targets[where])) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert snapshot(tmp) == before


@pytest.mark.slow
def test_build_overwrite_writes_beside_and_swaps_in_when_complete(photos_recipe: Path, capsys) -> None:
    tmp = photos_recipe.parent
    out = tmp / "out"
    assert _build(photos_recipe, str(out)) == 0
    old = snapshot(out)
    other = write_recipe(tmp, photos_recipe.read_text().replace("seed: 0", "seed: 1"), "other.yaml")
    capsys.readouterr()
    assert _build(other, str(out)) == 2 and "--overwrite" in capsys.readouterr().err
    # interrupted (here: stopped after one shard), the old build is whole and still the one at OUT
    assert _build(other, str(out), "--overwrite", "--max-shards", "1") == 0
    assert snapshot(out) == old
    staging = [p for p in tmp.iterdir() if p.name.startswith(".out.crispedit-next-")]
    assert len(staging) == 1
    assert _build(other, str(out), "--overwrite") == 0  # the rerun finishes the new build and swaps it in
    assert not staging[0].exists() and not [p for p in tmp.iterdir() if ".crispedit-" in p.name]
    import json

    assert json.loads((out / "manifest.json").read_text())["fingerprint"] != json.loads(old["manifest.json"])["fingerprint"]
    (out / "mine.txt").write_text("mine")
    capsys.readouterr()
    assert _build(photos_recipe, str(out), "--overwrite") == 2 and "did not write" in capsys.readouterr().err
    assert (out / "mine.txt").read_text() == "mine"


def test_train_and_eval_folders_are_claimed_too(built: Path, tmp_path: Path, capsys) -> None:
    from crispedit.mgt.cli import _claim_folder

    mine = user_folder(tmp_path)
    before = snapshot(mine)
    assert not _claim_folder(mine, "train", [str(built)], overwrite=True)
    assert not _claim_folder(built, "train", [str(built)], overwrite=True)
    assert not _claim_folder(built / "runs", "train", [str(built)], overwrite=False)
    assert snapshot(mine) == before
    run = tmp_path / "run"
    assert _claim_folder(run, "train", [str(built)], overwrite=False)
    (run / "checkpoints" / "checkpoint-0000002").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint-0000002" / "model.safetensors").write_bytes(b"weights")
    capsys.readouterr()
    assert not _claim_folder(run, "train", [str(built)], overwrite=False) and "--resume" in capsys.readouterr().err
    assert _claim_folder(run, "train", [str(built)], overwrite=False, resume=True)
    assert (run / "checkpoints" / "checkpoint-0000002" / "model.safetensors").exists()
    assert _claim_folder(run, "train", [str(built)], overwrite=True)
    assert not (run / "checkpoints").exists()
    assert not _claim_folder(run, "eval", [str(built)], overwrite=True)  # another kind of output


# --- the output root ----------------------------------------------------------------------------------

GOOD = """name: t
output:
  dir: {dir}
source: {{kind: skimage, photos: [coffee]}}
"""


@pytest.mark.parametrize("spelling", [
    "../escaped", "/tmp/crispedit-escaped", "file:///tmp/crispedit-escaped", "file:../escaped", "local:///tmp/crispedit-escaped",
    "local://../escaped", "simplecache::file:///tmp/crispedit-escaped", "out/../../escaped", "~/crispedit-escaped",
    "s3://bucket/crispedit", "link/inside", ".",
])
def test_a_recipes_output_dir_stays_inside_the_root_by_every_spelling(spelling: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      capsys) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)  # a symlink inside the root that leads out of it
    monkeypatch.chdir(root)
    recipe = write_recipe(root, GOOD.format(dir=spelling))
    capsys.readouterr()
    assert main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert f"{recipe}:3: output.dir: refused" in err, err


def test_the_root_comes_from_the_environment_and_a_recipe_can_only_narrow_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                           capsys) -> None:
    from crispedit.recipe import RecipeError, load_plan

    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(tmp_path, GOOD.format(dir="runs/a"))
    assert load_plan(recipe).output_dir == str(tmp_path / "runs" / "a")
    monkeypatch.setenv("CRISPEDIT_OUTPUT_ROOT", str(tmp_path / "elsewhere"))
    assert load_plan(recipe).output_dir == str(tmp_path / "elsewhere" / "runs" / "a")
    monkeypatch.setenv("CRISPEDIT_OUTPUT_ROOT", "s3://bucket/prefix")
    assert load_plan(recipe).output_dir == "s3://bucket/prefix/runs/a"
    monkeypatch.delenv("CRISPEDIT_OUTPUT_ROOT")
    narrowed = write_recipe(tmp_path, GOOD.format(dir="a").replace("output:\n", "output:\n  root: runs\n"), "narrow.yaml")
    assert load_plan(narrowed).output_dir == str(tmp_path / "runs" / "a")
    for root in ("/", "..", "file:///", "local://.."):
        widened = write_recipe(tmp_path, GOOD.format(dir="a").replace("output:\n", f"output:\n  root: {root}\n"), "wide.yaml")
        with pytest.raises(RecipeError, match=r"wide.yaml:3: output.root: refused"):
            load_plan(widened)
    assert load_plan(recipe, out=tmp_path.parent / "anywhere").output_dir == str(tmp_path.parent / "anywhere")  # the user's own choice


def test_an_output_is_never_an_fsspec_chain_and_never_climbs_a_bucket() -> None:
    from crispedit.core.paths import UnsafePathError
    from crispedit.core.storage import Output

    for bad in ("simplecache::file:///tmp/x", "memory://bucket/../x"):
        with pytest.raises(UnsafePathError):
            Output(bad)


# --- recipes that would exhaust the machine ----------------------------------------------------------

BOMB = "name: bomb\n" + "".join(
    f"{chr(97 + i)}: &{chr(97 + i)} [" + ",".join([f"*{chr(96 + i)}" if i else '"lol"'] * 9) + "]\n" for i in range(12)
)


@pytest.mark.parametrize("text, line, words", ids=["billion-laughs", "self-alias", "self-alias-in-list", "deep", "merge-bomb"], argvalues=[
    (BOMB, None, "alias bomb"),
    ("name: x\nsource: &s\n  kind: skimage\n  again: *s\n", 4, "refers to itself"),
    ("name: x\nlist: &l [1, 2, *l]\n", 2, "refers to itself"),
    ("name: x\ndeep: " + "[" * 500 + "]" * 500 + "\n", 2, "levels deep"),
    ("name: x\nm0: &m0 {kind: skimage}\n" + "".join(f"m{i}: &m{i} {{<<: *m{i - 1}, a: *m{i - 1}, b: *m{i - 1}}}\n" for i in range(1, 40)),
     None, "alias bomb"),
])
def test_yaml_that_would_exhaust_memory_is_refused_at_once(text: str, line: int | None, words: str, tmp_path: Path) -> None:
    from crispedit.recipe import RecipeError, load_plan

    recipe = write_recipe(tmp_path, text)
    began = time.perf_counter()
    with pytest.raises(RecipeError) as caught:
        load_plan(recipe)
    seconds = time.perf_counter() - began
    tracemalloc.start()  # memory on a second read (tracing slows Python several times, so not while timing)
    with pytest.raises(RecipeError):
        load_plan(recipe)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    message = str(caught.value)
    assert words in message and str(recipe) in message
    if line is not None:
        assert f"{recipe}:{line}:" in message
    assert seconds < 1.0 and peak < 64 * 2**20, (seconds, peak)


def test_files_a_recipe_names_are_read_with_the_same_bounds(tmp_path: Path, capsys) -> None:
    """A taxonomy or a filter chain is YAML a recipe points at: an alias bomb there is refused the same way."""
    (tmp_path / "bomb.yaml").write_text(BOMB)
    (tmp_path / "filters").mkdir()
    (tmp_path / "filters" / "bomb.yaml").write_text(BOMB.replace("name: bomb", "stages: []"))
    taxonomy = write_recipe(tmp_path, f"name: t\noutput: {{dir: out}}\nsource: {{kind: skimage}}\nstages:\n"
                                      f"  - {{kind: instruct, backend: template, taxonomy: {tmp_path / 'bomb.yaml'}}}\n", "taxonomy.yaml")
    chain = write_recipe(tmp_path, "name: t\noutput: {dir: out}\nsource: {kind: skimage}\nfilters: [bomb]\n", "chain.yaml")
    for recipe in (taxonomy, chain):
        capsys.readouterr()
        assert _in_time(lambda recipe=recipe: main(["validate", str(recipe)]), 20) == 2
        assert "alias bomb" in capsys.readouterr().err


def test_a_builds_recipe_copy_is_read_with_the_same_bounds(built: Path, tmp_path: Path, capsys) -> None:
    """A build from elsewhere may hold a hostile recipe.yaml: the card and preview read the build without it,
    a rewrite (refilter, dedupe) refuses it in one line."""
    from crispedit.ops.build_info import read_build

    hostile = tmp_path / "hostile"
    shutil.copytree(built, hostile)
    (hostile / "recipe.yaml").write_text(BOMB)
    info = _in_time(lambda: read_build(hostile))
    assert info.recipe == {} and [s.name for s in info.stages] == ["instruct", "classical", "pixel_change"]  # from the manifest
    capsys.readouterr()
    assert _in_time(lambda: main(["refilter", str(hostile), "--filters", str(BASIC), "--to", str(tmp_path / "new")]), 20) == 2
    err = capsys.readouterr().err
    assert "alias bomb" in err and "recipe.yaml" in err and not (tmp_path / "new").exists()


def test_validate_answers_a_billion_laughs_from_the_command_line(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, BOMB)
    result = subprocess.run([sys.executable, "-m", "crispedit.cli", "validate", str(recipe)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "alias bomb" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("source, key", [
    ("{kind: empty, count: 100000000000000000000}", "source.count"),
    ("{kind: skimage, edits_per_image: 1000000000}", "source.edits_per_image"),
    ("{kind: skimage, limit: 100000000000000}", "source.limit"),
])
def test_huge_counts_are_refused_with_their_line(source: str, key: str, tmp_path: Path, capsys) -> None:
    recipe = write_recipe(tmp_path, f"name: big\noutput: {{dir: out}}\nsource: {source}\n")
    capsys.readouterr()
    assert main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert f"{recipe}:3: {key}:" in err and "less than or equal" in err, err


def test_a_shard_plan_is_bounded_before_it_is_made() -> None:
    from crispedit.core.shards import PlanTooLarge, plan_shards

    with pytest.raises(PlanTooLarge, match="items"):
        plan_shards(10**20, 256)
    with pytest.raises(PlanTooLarge, match="shard_size"):
        plan_shards(10**9, 1)
    assert len(plan_shards(1000, 256)) == 4


def test_a_huge_shard_size_is_refused_with_its_line(tmp_path: Path, capsys) -> None:
    recipe = write_recipe(tmp_path, "name: big\noutput: {dir: out, shard_size: 10000000000}\nsource: {kind: skimage}\n")
    capsys.readouterr()
    assert main(["validate", str(recipe)]) == 2
    assert f"{recipe}:2: output.shard_size:" in capsys.readouterr().err


# --- bounded reads --------------------------------------------------------------------------------------


def _png(path: Path, side: int = 16) -> Path:
    from PIL import Image

    Image.new("RGB", (side, side), (10, 200, 30)).save(path)
    return path


def _parquet_source(tmp_path: Path, cells: list[str], **params: object) -> list:
    from crispedit.core.stage import BuildContext
    from crispedit.recipe.catalog import SOURCES

    pq.write_table(pa.table({"image": cells, "caption": ["c"] * len(cells)}), tmp_path / "index.parquet")
    cls = SOURCES["parquet"]
    source = cls(cls.Params.model_validate({"files": str(tmp_path / "index.parquet"), "max_side": None, "size_multiple": 1, **params}),
                 BuildContext("t", "f", 0))
    return source.load(0, len(cells))


def _in_time(fn: Callable[[], object], seconds: float = 30.0) -> object:
    """Run ``fn`` in a thread: a read that blocks (a FIFO) or never ends (a device) fails the test instead of hanging it."""
    box: list[object] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            box.append(fn())
        except BaseException as error:  # noqa: BLE001 - handed to the test's thread
            failed.append(error)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), "the read did not return"
    if failed:
        raise failed[0]
    return box[0]


def test_cells_naming_devices_fifos_or_big_files_are_rejects(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    _png(base / "ok.png")
    os.mkfifo(base / "pipe.png")
    (base / "big.png").write_bytes(b"\x89PNG" + b"\0" * 5000)
    (base / "zero.png").symlink_to("/dev/zero")
    cells = ["ok.png", "pipe.png", "big.png", "zero.png", "/dev/zero", "/dev/urandom"]
    samples = _in_time(lambda: _parquet_source(tmp_path, cells, base=str(base), max_bytes=4096))
    reasons = [s.reject.reason if s.reject else None for s in samples]
    assert reasons[0] is None
    assert "a FIFO" in reasons[1] and reasons[2].startswith("file too large")
    assert reasons[3].startswith("unsafe path") and reasons[4].startswith("unsafe path")  # /dev is outside base
    samples = _in_time(lambda: _parquet_source(tmp_path, ["/dev/zero", str(base / "pipe.png")], absolute_paths=True))
    assert [s.reject.reason.split(":")[0] for s in samples] == ["unreadable file", "unreadable file"]
    assert "character device" in samples[0].reject.reason and "FIFO" in samples[1].reject.reason


def test_a_folder_source_bounds_every_read(tmp_path: Path) -> None:
    from crispedit.core.stage import BuildContext
    from crispedit.recipe.catalog import SOURCES

    folder = tmp_path / "photos"
    folder.mkdir()
    _png(folder / "a.png")
    (folder / "big.png").write_bytes(b"\x89PNG" + b"\0" * 5000)
    cls = SOURCES["folder"]
    source = cls(cls.Params.model_validate({"folder": str(folder), "max_bytes": 4096, "max_side": None}), BuildContext("t", "f", 0))
    samples = _in_time(lambda: source.load(0, source.count()))
    assert [s.reject.reason.split(":")[0] if s.reject else None for s in samples] == [None, "file too large"]


def test_a_webdataset_member_over_max_bytes_is_a_reject_and_is_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import tarfile

    from crispedit.core.stage import BuildContext
    from crispedit.recipe.catalog import SOURCES

    small = io.BytesIO()
    __import__("PIL.Image").Image.new("RGB", (16, 16), (1, 2, 3)).save(small, format="PNG")
    with tarfile.open(tmp_path / "shard-0000.tar", "w") as tar:
        for name, blob in (("000000.png", small.getvalue()), ("000001.png", b"\x89PNG" + b"\0" * 20000), ("000002.png", small.getvalue())):
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    cls = SOURCES["webdataset"]
    source = cls(cls.Params.model_validate({"shards": str(tmp_path / "shard-0000.tar"), "max_bytes": 4096, "max_side": None}),
                 BuildContext("t", "f", 0))
    reads: list[int] = []
    original = type(source._index().files[0].fs).cat_file

    def counted(fs: object, path: str, start: int | None = None, end: int | None = None, **kwargs: object) -> bytes:
        reads.append((end or 0) - (start or 0))
        return original(fs, path, start=start, end=end, **kwargs)

    monkeypatch.setattr(type(source._index().files[0].fs), "cat_file", counted)
    samples = source.load(0, 3)
    assert [s.reject.reason.split(":")[0] if s.reject else None for s in samples] == [None, "file too large", None]
    assert max(reads) < 4096  # the big member's bytes were never fetched


def test_text_files_and_recipes_are_read_within_bounds(tmp_path: Path, capsys) -> None:
    from crispedit.sources.text import read_texts

    with pytest.raises(ValueError, match="character device"):
        _in_time(lambda: read_texts("/dev/zero", "text"))
    big = tmp_path / "topics.txt"
    big.write_text("a lighthouse\n" * 1000)
    with pytest.raises(ValueError, match="file too large"):
        read_texts(str(big), "text", max_bytes=100)
    capsys.readouterr()
    assert _in_time(lambda: main(["validate", "/dev/zero"])) == 2
    assert "character device" in capsys.readouterr().err


@pytest.mark.parametrize("spelling, inside", [
    ("img.png", True), ("./img.png", True), ("sub/../img.png", True), ("{base}/img.png", True), ("file://{base}/img.png", True),
    ("local://{base}/img.png", True),
    ("../secret.png", False), ("sub/../../secret.png", False), ("{outside}", False), ("file://{outside}", False),
    ("file:{outside}", False), ("local://{outside}", False), ("local://../secret.png", False), ("simplecache::file://{outside}", False),
    ("simplecache::file://{base}/img.png", False), ("escape.png", False), ("~/secret.png", False), ("memory://secret.png", False),
])
def test_a_path_cell_stays_inside_base_by_every_spelling(spelling: str, inside: bool, tmp_path: Path) -> None:
    base = tmp_path / "base"
    (base / "sub").mkdir(parents=True)
    _png(base / "img.png")
    outside = _png(tmp_path / "secret.png")
    (base / "escape.png").symlink_to(outside)
    cell = spelling.format(base=base, outside=outside)
    [sample] = _parquet_source(tmp_path, [cell], base=str(base))
    if inside:
        assert sample.alive, sample.reject
    else:
        assert not sample.alive and sample.reject.reason.startswith("unsafe path"), sample.reject


def test_without_base_local_cells_need_the_recipes_permission(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    here = tmp_path / "work"
    here.mkdir()
    _png(here / "img.png")
    outside = _png(tmp_path / "secret.png")
    monkeypatch.chdir(here)
    cells = ["img.png", str(outside), f"file://{outside}", "../secret.png"]
    refused = _parquet_source(here, cells)
    assert [s.alive for s in refused] == [True, False, False, False]
    allowed = _parquet_source(here, cells, absolute_paths=True)
    assert all(s.alive for s in allowed)


# --- clear errors -----------------------------------------------------------------------------------------


PARQUET_RECIPE = """name: pq
output: {{dir: out, shard_size: 2}}
source:
  kind: parquet
  files: {files}
  max_side: 32
stages:
  - {{kind: instruct, backend: template}}
  - {{kind: classical}}
"""


DAMAGE: list[tuple[Callable[[Path], object], str]] = [
    (lambda p: p.write_bytes(b""), "not a readable Parquet file"),
    (lambda p: p.write_bytes(b"this is not parquet at all" * 10), "not a readable Parquet file"),
    (lambda p: p.write_bytes(b"PAR1" + os.urandom(300) + b"PAR1"), "not a readable Parquet file"),
    (lambda p: pq.write_table(pa.table({"picture": [b"x"], "caption": ["c"]}), p), "no column 'image'"),
    (lambda p: pq.write_table(pa.table({"image": [1, 2], "caption": ["c", "d"]}), p), "column 'image'"),
]


@pytest.mark.parametrize("make, words", DAMAGE)
def test_malformed_parquet_sources_are_one_line(make: Callable[[Path], object], words: str, tmp_path: Path, capsys) -> None:
    source = tmp_path / "images.parquet"
    make(source)
    recipe = write_recipe(tmp_path, PARQUET_RECIPE.format(files=source))
    capsys.readouterr()
    assert _build(recipe, str(tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert words in err and str(source) in err and f"{recipe}:3: source" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("make, words", DAMAGE)
def test_a_source_damaged_after_a_build_leaves_its_committed_shards(make: Callable[[Path], object], words: str, tmp_path: Path,
                                                                          capsys) -> None:
    from PIL import Image

    buffer = __import__("io").BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buffer, format="PNG")
    source = tmp_path / "images.parquet"
    pq.write_table(pa.table({"image": [buffer.getvalue()] * 4, "caption": ["a red square"] * 4}), source)
    recipe = write_recipe(tmp_path, PARQUET_RECIPE.format(files=source))
    out = tmp_path / "out"
    assert _build(recipe, str(out)) == 0
    committed = snapshot(out)
    make(source)  # the source is damaged after the build: a rerun must say so and touch nothing
    capsys.readouterr()
    assert _build(recipe, str(out)) == 2
    err = capsys.readouterr().err
    assert words in err and str(source) in err and f"{recipe}:" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert snapshot(out) == committed


@pytest.mark.slow
def test_a_hub_publish_without_network_is_one_line(built: Path, tmp_path: Path) -> None:
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": "hf_fake_token_for_the_test", "HF_HUB_ETAG_TIMEOUT": "2"}
    result = subprocess.run([sys.executable, "-m", "crispedit.cli", "publish", str(built), "--repo-id", "org/none", "--examples", "1"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "127.0.0.1:9" in lines[0] and "Traceback" not in result.stderr, result.stderr
    assert "hf_fake_token_for_the_test" not in result.stderr + result.stdout


def test_validate_names_what_a_recipe_reaches(tmp_path: Path, capsys) -> None:
    """docs/recipes.md: validate lists the plugins, endpoints and outside paths a recipe uses, credentials scrubbed."""
    photos = tmp_path / "elsewhere" / "photos"
    photos.mkdir(parents=True)
    _png(photos / "a.png")
    folder = tmp_path / "recipes"
    folder.mkdir()
    recipe = write_recipe(folder, f"""name: reach
plugins: [json]
output: {{dir: out}}
source: {{kind: folder, folder: {photos}}}
stages:
  - kind: instruct
    backend: openai
    mode: caption
    llm: {{base_url: "http://user:hunter2@llm.example:8000/v1?api_key=sk-secret", model: m, api_key_env: MY_KEY}}
""")
    assert main(["validate", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "plugins (imported" in out and "json" in out
    assert "stages.instruct.llm.base_url: http://***@llm.example:8000/v1?api_key=***" in out and "$MY_KEY" in out
    assert f"source.folder: {photos}" in out
    assert "hunter2" not in out and "sk-secret" not in out
