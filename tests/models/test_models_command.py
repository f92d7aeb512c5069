"""``crispedit models``: the listing agrees with the stages, ``--download`` fetches exactly the listed files from a
Hub-protocol server into a cache a later offline load resolves from, and a pin served as another commit is refused.

The model is a tiny random-init CLIP of the real class, saved with ``save_pretrained`` into the fake Hub under
the pinned id and commit, beside files no loader reads (they must not be fetched)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import constants

from crispedit.cli import main
from crispedit.engine.plan import context_for, make_stage
from crispedit.models.hub import COMMIT, RevisionMismatch, cached_commit, check_loaded
from crispedit.models.pins import PINS
from crispedit.models.spec import ModelSpec
from crispedit.recipe import load_plan
from tests.helpers.hub_server import FakeHub
from tests.helpers.recipes import write_recipe

ROOT = Path(__file__).resolve().parents[2]
CLIP = "openai/clip-vit-large-patch14"
PIN = PINS[CLIP]
#: In the repository but read by no loader: a download that fetches any of them fetched too much.
UNUSED = {"README.md": b"# a model card\n", "pytorch_model.bin": b"pickled weights, a second copy",
          "flax_model.msgpack": b"flax weights", "onnx/model.onnx": b"onnx export"}

RECIPE = """\
name: clip-only
seed: 0
output: {dir: out/clip-only, shard_size: 4}
execution: {runner: local}
source: {kind: skimage, edits_per_image: 1, max_side: 64, photos: [astronaut]}
stages:
  - kind: instruct
    backend: template
  - kind: classical
  - kind: clip_filter
    device: cpu
"""


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The files save_pretrained writes for a tiny CLIP, its tokenizer and its image processor."""
    from transformers import CLIPImageProcessor

    from crispedit.models.clip import TINY_IMAGE, tiny_clip

    folder = tmp_path_factory.mktemp("tiny-clip")
    model, tokenizer, _ = tiny_clip(0)
    model.float().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": TINY_IMAGE}, crop_size={"height": TINY_IMAGE, "width": TINY_IMAGE}).save_pretrained(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, clip_files: dict[str, bytes]):
    server = FakeHub("unused-token").start()
    monkeypatch.setattr(constants, "ENDPOINT", server.url)  # both read from HF_ENDPOINT at import time
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "default-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("CRISPEDIT_OUTPUT_ROOT", str(tmp_path))
    server.add_model(CLIP, {**clip_files, **UNUSED}, commit=PIN, card={"license": "test-licence"})
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    path = tmp_path / "clip-only.yaml"
    path.write_text(RECIPE.replace("out/clip-only", str(tmp_path / "out")), encoding="utf-8")
    return path


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(["models", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "recipes").glob("*.yaml")))
def test_every_pinned_model_a_bundled_recipe_names_is_listed_with_its_pin(
        name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Against the stages' own provenance (model_ids): every Hub model there is listed, at its pin, and nothing else."""
    path = ROOT / "recipes" / name
    if name == "video.yaml":  # its source folder is made by a demo script: an empty one validates
        (tmp_path / "clips").mkdir()
        path = write_recipe(tmp_path, path.read_text(encoding="utf-8").replace("out/video_demo/videos", str(tmp_path / "clips")), name)
    plan = load_plan(path)
    expected = set()
    for entry in plan.stages:
        for value in make_stage(entry, context_for(plan)).model_ids().values():
            model_id, _, revision = value.partition(":")[0].partition("@")
            if COMMIT.fullmatch(revision):  # a Hub id at a commit (LLM endpoints and readers are not)
                expected.add((model_id, revision))
    listed = {(m["id"], m["revision"]) for m in _json(capsys, str(path), "--offline")["models"]}
    assert listed == expected
    assert all(PINS.get(model_id, revision) == revision for model_id, revision in listed)


def test_the_table_names_every_model_and_says_what_it_does_not_know(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", str(ROOT / "recipes" / "world.yaml"), "--offline"]) == 0
    text = capsys.readouterr().out
    assert "world: 6 Hub models" in text and "note: offline: sizes unknown" in text
    assert all(PINS[m][:12] in text for m in (CLIP, "stabilityai/stable-diffusion-xl-base-1.0", "h94/IP-Adapter"))


def test_download_refuses_a_folder_that_is_not_a_hub_cache(recipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("mine", encoding="utf-8")
    assert main(["models", str(recipe), "--download", "--to", str(mine)]) == 2
    assert "not a Hugging Face cache (thesis.tex)" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]
    assert main(["models", str(recipe), "--to", str(tmp_path / "cache")]) == 2  # --to without --download
    assert "--to DIR goes with --download" in capsys.readouterr().err


def test_tiny_lists_nothing_to_fetch(capsys: pytest.CaptureFixture[str]) -> None:
    assert _json(capsys, str(ROOT / "recipes" / "world.yaml"), "--tiny", "--offline")["models"] == []


def test_sizes_come_from_the_hub_listing_and_unreachable_models_are_unknown(
        hub: FakeHub, clip_files: dict[str, bytes], capsys: pytest.CaptureFixture[str]) -> None:
    """world.yaml: the CLIP repo is on the server (sized from model_info), the others are not (unknown, no error)."""
    rows = {m["id"]: m for m in _json(capsys, str(ROOT / "recipes" / "world.yaml"))["models"]}
    clip = rows.pop(CLIP)
    assert set(clip["files"]) == set(clip_files)  # every file the tiny CLIP has is one the loaders read
    assert clip["size"] == sum(len(data) for data in clip_files.values())
    assert clip["commit"] == PIN
    assert clip["license"] == "test-licence (the model card's tag)"  # not in models/terms.py: the card's tag
    assert rows and all(m["size"] == "unknown" and m["files"] is None for m in rows.values())


def test_download_fetches_exactly_the_listed_files_and_an_offline_load_resolves_from_there(
        hub: FakeHub, recipe: Path, clip_files: dict[str, bytes], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    out = _json(capsys, str(recipe), "--download", "--to", str(cache))
    (row,) = out["models"]
    assert (row["id"], row["revision"], row["commit"]) == (CLIP, PIN, PIN)
    snapshot = cache / "models--openai--clip-vit-large-patch14" / "snapshots" / PIN
    on_disk = {str(p.relative_to(snapshot)) for p in snapshot.rglob("*") if p.is_file()}
    assert on_disk == set(clip_files) == set(row["files"])
    assert {path for _, _, path in hub.downloads} == set(clip_files)  # nothing else crossed the wire
    assert not (tmp_path / "default-cache").exists()  # --to, not the default cache

    # a fresh process, the Hub unreachable and offline mode on: the real loader reads the cache at the pin
    code = ("from crispedit.models.clip import load_clip; from crispedit.models.spec import ModelSpec; "
            "from crispedit.models.hub import LOADED; import json; "
            f"m, tok, pre = load_clip(ModelSpec(id={CLIP!r})); print(json.dumps([LOADED, type(m).__name__, pre.crop]))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_ENDPOINT": "http://127.0.0.1:9"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    loaded, cls, crop = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded == {f"{CLIP}@{PIN}": PIN} and cls == "CLIPModel" and crop == [32, 32]


@pytest.mark.slow
def test_an_offline_build_from_the_downloaded_cache_records_the_resolved_commit(
        hub: FakeHub, recipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The workflow docs/models.md gives: download with --to, then build with HF_HUB_OFFLINE=1 HF_HUB_CACHE=DIR."""
    cache = tmp_path / "cache"
    _json(capsys, str(recipe), "--download", "--to", str(cache))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_ENDPOINT": "http://127.0.0.1:9"}
    done = subprocess.run([sys.executable, "-m", "crispedit.cli", "build", str(recipe), "--runner", "local"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["models"] == {"clip_filter": {"clip": {"id": CLIP, "revision": PIN, "commit": PIN}}}
    import pyarrow.parquet as pq

    rows = pq.read_table(next((tmp_path / "out").rglob("*.parquet")), columns=["provenance"]).to_pylist()
    assert rows and all(json.loads(r["provenance"])["model_commits"] == {f"{CLIP}@{PIN}": PIN} for r in rows)


def _elsewhere(hub: FakeHub, clip_files: dict[str, bytes]) -> str:
    """The server answers the pin with another commit (different weights under the same names)."""
    other = hub.add_model(CLIP, {**clip_files, "config.json": clip_files["config.json"] + b"\n"})
    hub.resolve_elsewhere(CLIP, PIN, other)
    return other


def test_download_refuses_a_pin_the_server_resolves_to_another_commit(
        hub: FakeHub, recipe: Path, clip_files: dict[str, bytes], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = _elsewhere(hub, clip_files)
    assert main(["models", str(recipe), "--download", "--to", str(tmp_path / "cache")]) == 2
    error = capsys.readouterr().err
    assert CLIP in error and PIN in error and other in error
    assert hub.downloads == []  # refused from the listing, before any file was fetched


def test_a_build_refuses_the_mismatch_before_writing_anything(
        hub: FakeHub, recipe: Path, clip_files: dict[str, bytes], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = _elsewhere(hub, clip_files)
    assert main(["build", str(recipe), "--runner", "local"]) != 0
    error = capsys.readouterr().err
    assert CLIP in error and other in error
    assert not (tmp_path / "out").exists()


def test_a_loader_refuses_a_cache_that_resolved_the_pin_elsewhere(
        hub: FakeHub, clip_files: dict[str, bytes], tmp_path: Path) -> None:
    """What a build's worker meets when the cache (filled by another tool) maps the pin to another snapshot."""
    from huggingface_hub import hf_hub_download

    other = _elsewhere(hub, clip_files)
    hf_hub_download(CLIP, "config.json", revision=PIN)  # the client follows the server: refs/PIN -> other
    assert cached_commit(CLIP, PIN) == other
    with pytest.raises(RevisionMismatch, match=f"{CLIP}: pinned to commit {PIN}, but the Hub resolved it to {other}"):
        check_loaded(ModelSpec(id=CLIP))


def test_local_folders_are_recorded_as_paths_without_a_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from crispedit.engine.plan import plan_stages
    from crispedit.models.hub import LOADED, resolved_models

    monkeypatch.setenv("CRISPEDIT_OUTPUT_ROOT", str(tmp_path))
    spec = ModelSpec(id=str(tmp_path))
    assert check_loaded(spec) is None and spec.describe() not in LOADED
    text = RECIPE.replace("device: cpu", f"device: cpu\n    clip_model: {tmp_path}").replace("out/clip-only", str(tmp_path / "o"))
    (tmp_path / "r.yaml").write_text(text, encoding="utf-8")
    assert resolved_models(plan_stages(load_plan(tmp_path / "r.yaml"))) == {"clip_filter": {"clip": {"path": str(tmp_path)}}}


SDXL = "stabilityai/stable-diffusion-xl-base-1.0"
SDXL_RECIPE = """\
name: sdxl-only
seed: 0
output: {dir: out/sdxl-only, shard_size: 4}
source: {kind: empty, count: 1, seed_as: caption, texts: [a cat on a mat]}
stages:
  - kind: sdxl_source
    variant: fp16
"""


@pytest.mark.slow
def test_an_sdxl_pipeline_downloads_its_components_of_the_variant_and_loads_offline(
        hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The diffusers patterns: model_index.json and each component's config and fp16 safetensors, not the rest
    of the repository (the default-precision copies, a single-file checkpoint), but the fp16 weights of a
    folder that is no component (SDXL's vae_1_0/): diffusers' offline load refuses a snapshot without them."""
    from diffusers import StableDiffusionXLPipeline

    from crispedit.sdxl.models import tiny_sdxl_components

    folder = tmp_path / "tiny-sdxl"
    components = {**tiny_sdxl_components(0), "feature_extractor": None, "image_encoder": None}
    StableDiffusionXLPipeline(**components).save_pretrained(folder, variant="fp16")
    files = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    unused = {"unet/diffusion_pytorch_model.safetensors": b"full precision", "vae_1_0/config.json": b"{}",
              "vae_1_0/diffusion_pytorch_model.fp16.safetensors": b"another vae", "sd_xl_base_1.0.safetensors": b"single file"}
    hub.add_model(SDXL, {**files, **unused}, commit=PINS[SDXL])
    recipe = write_recipe(tmp_path, SDXL_RECIPE.replace("out/sdxl-only", str(tmp_path / "out")), "sdxl.yaml")
    cache = tmp_path / "cache"
    (row,) = _json(capsys, str(recipe), "--download", "--to", str(cache))["models"]
    needed = set(files) | {"vae_1_0/diffusion_pytorch_model.fp16.safetensors"}
    assert set(row["files"]) == needed
    assert {path for _, _, path in hub.downloads} == needed

    code = ("from crispedit.sdxl.models import load_pipeline; from crispedit.sdxl.options import RunOptions; "
            "from crispedit.sdxl.stages.base import SDXL_BASE; from crispedit.models.hub import LOADED; import json; "
            "pipe = load_pipeline('t2i', SDXL_BASE, RunOptions(dtype='float32', device='cpu', variant='fp16'), 0); "
            "print(json.dumps([LOADED, type(pipe).__name__]))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_ENDPOINT": "http://127.0.0.1:9"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded, cls = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded == {f"{SDXL}@{PINS[SDXL]}": PINS[SDXL]} and cls == "StableDiffusionXLPipeline"
