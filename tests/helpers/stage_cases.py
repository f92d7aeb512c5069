"""One example per registered stage and source kind, for the contract battery (tests/contract/test_battery.py).

diffusers gives every pipeline test a ``get_dummy_components``/``get_dummy_inputs``; this is
the same idea as data: a new kind adds its case here, and the battery checks it like all others.
A stage case gives the stage's params and a function making its input samples (already
carrying whatever earlier stages would have written); a source case gives params for data
the function writes under a temporary folder.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from crispedit.core.sample import Sample, sample_id


def photo(seed: int, size: int = 32) -> np.ndarray:
    """A small drawn picture: a gradient with a bright square, different per seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    image = np.stack([(x * 255 // size), (y * 255 // size), np.full_like(x, rng.integers(0, 255))], -1).astype(np.uint8)
    lo = int(rng.integers(2, size // 2))
    image[lo : lo + size // 3, lo : lo + size // 3] = rng.integers(0, 255, 3)
    return image


def write_edit_dataset(folder: Path, n: int, size: int = 48) -> Path:
    """An existing editing dataset as re-edit recipes read it: Parquet of (source_image, instruction, target_image)."""
    def png(array: np.ndarray) -> dict:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, "PNG")
        return {"bytes": buffer.getvalue(), "path": None}

    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"source_image": png(photo(i, size)), "instruction": f"make picture {i} brighter",
             "target_image": png(np.clip(photo(i, size).astype(np.int16) + 50, 0, 255).astype(np.uint8))} for i in range(n)]
    pq.write_table(pa.Table.from_pylist(rows), folder / "edits.parquet")
    return folder


def items(n: int = 3, **fields: Any) -> list[Sample]:
    out = []
    for i in range(n):
        s = Sample(id=sample_id("battery", i), index=i, source_ref=f"item{i}", source_image=photo(i),
                   source_caption=f"a drawn square number {i}", meta={"image_index": i, "variant": 0})
        for key, value in fields.items():
            setattr(s, key, value(i) if callable(value) else value)
        out.append(s)
    return out


def pairs(n: int = 3) -> list[Sample]:
    out = items(n)
    for s in out:
        s.target_image = np.clip(s.source_image.astype(np.int16) + 40 + 10 * s.index, 0, 255).astype(np.uint8)
        s.instruction = "make it brighter"
        s.target_caption = s.source_caption + ", brighter"
    return out


def with_masks(n: int = 3) -> list[Sample]:
    out = pairs(n)
    for s in out:
        mask = np.zeros(s.source_image.shape[:2], np.uint8)
        mask[4 : 8 + 6 * s.index, 4:20] = 255
        s.mask = mask
        s.meta["precise_mask"] = mask
    return out


def edited(n: int = 3) -> list[Sample]:
    from crispedit.core.stage import BuildContext
    from crispedit.instruct.stages import InstructParams, InstructStage

    stage = InstructStage(InstructParams(backend="template"), BuildContext("battery", "battery", 0))
    return stage([s.clone() for s in items(n)])


def candidates(n: int = 2) -> list[Sample]:
    out = []
    for parent in pairs(n):
        for k in range(3):
            out.append(parent.spawn(k, scores={"pixel_l1": 0.1 * (k + 1) + parent.index}))
    return out


@dataclass
class StageCase:
    params: dict[str, Any]
    inputs: Callable[[], list[Sample]]
    #: Outputs a stage may legitimately leave empty for these inputs.
    optional: set[str] = field(default_factory=set)


STAGE_CASES: dict[str, StageCase] = {
    "instruct": StageCase({"backend": "template"}, items, optional={"meta.edit"}),
    "classical": StageCase({}, edited),
    "copy": StageCase({}, items),
    "ground": StageCase(
        {"detector_model": "tiny", "segmenter_model": "tiny", "keywords": ["main object"], "box_threshold": 0.0, "text_threshold": 0.0},
        lambda: items(2, edit_objects=lambda i: ["square"]),
    ),
    "mask_filter": StageCase({}, with_masks),
    "pixel_change": StageCase({}, pairs),
    "pixel_threshold": StageCase({}, pairs),
    "select": StageCase({"score": "pixel_l1", "keep": 1}, candidates),
}


# --- quality filters (issue 11): a local chat server for the judge, a benchmark folder for decontaminate ---
def _judge_server_url() -> str:
    """A tests/helpers/llm_server.py instance for the judge's case, started once per process (a daemon thread)."""
    from tests.helpers.llm_server import LLMServer

    global _JUDGE_SERVER
    if _JUDGE_SERVER is None:
        _JUDGE_SERVER = LLMServer().start()
    return _JUDGE_SERVER.url


def _benchmark_folder() -> str:
    """Two drawn benchmark images, unlike the cases' photos (so the case keeps its samples)."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="crispedit-battery-bench-"))
    for i in range(2):
        y, x = np.mgrid[0:48, 0:48]
        Image.fromarray(np.stack([(x * y) % 256, (x * 7) % 256, (y * 13) % 256], -1).astype(np.uint8)[:, :: i + 1]).save(folder / f"b{i}.png")
    return str(folder)


_JUDGE_SERVER = None
STAGE_CASES["clip_filter"] = StageCase({"clip_model": "tiny", "dino_model": "tiny"}, pairs)
STAGE_CASES["locality_filter"] = StageCase({"max_l1_outside": 0.9}, with_masks)
STAGE_CASES["safety_filter"] = StageCase({"model": "tiny"}, pairs)
STAGE_CASES["dedupe"] = StageCase({}, pairs)
STAGE_CASES["decontaminate"] = StageCase({"benchmarks": [{"name": "drawn", "kind": "folder", "path": _benchmark_folder()}]}, pairs)
STAGE_CASES["judge"] = StageCase(
    {"llm": {"base_url": _judge_server_url(), "model": "local-test-model", "api_key_env": None, "timeout": 5, "max_retries": 1},
     "cache": False},
    pairs,
)

def write_folder(root: Path) -> dict[str, Any]:
    folder = root / "photos"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(photo(i, 40)).save(folder / f"red_car_{i}.png")
    (folder / "notes.txt").write_text("not an image")
    return {"folder": str(folder), "max_side": 32}


def _png(i: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(photo(i, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_parquet(root: Path) -> dict[str, Any]:
    rows = [{"bytes": _png(i), "path": None} for i in range(3)] + [{"bytes": b"\xff\xd8\xffbroken", "path": None}]
    pq.write_table(pa.table({"image": rows, "caption": [f"photo {i}" for i in range(4)]}), root / "photos.parquet", row_group_size=2)
    return {"files": [str(root / "photos.parquet")], "max_side": 32}


def write_hf(root: Path) -> dict[str, Any]:
    import datasets

    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    images = [{"bytes": _png(i), "path": None} for i in range(3)]
    datasets.Dataset.from_dict({"image": images, "text": ["a", "b", "c"]}, features=features).save_to_disk(str(root / "ds"))
    return {"path": str(root / "ds"), "caption_column": "text", "max_side": 32}


def write_webdataset(root: Path) -> dict[str, Any]:
    with tarfile.open(root / "shard-0000.tar", "w") as tar:
        for i in range(3):
            for name, data in ((f"{i:06d}.png", _png(i)), (f"{i:06d}.txt", f"photo {i}".encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return {"shards": [str(root / "shard-0000.tar")], "max_side": 32}


def write_captions(root: Path) -> dict[str, Any]:
    file = root / "captions.jsonl"
    file.write_text('{"caption": "a cat on a mat"}\n{"caption": ""}\n{"caption": "a boat at sea"}\n')
    return {"file": str(file)}


SOURCE_CASES: dict[str, Callable[[Path], dict[str, Any]]] = {
    "empty": lambda root: {"count": 3, "texts": ["a castle", "a harbour"]},
    "captions": write_captions,
    "skimage": lambda root: {"photos": ["astronaut", "coffee"], "max_side": 32, "edits_per_image": 2},
    "folder": write_folder,
    "parquet": write_parquet,
    "hf_dataset": write_hf,
    "webdataset": write_webdataset,
}


# --- video kinds (videos source, video_pairs, video_caption) -----------------------------------

_VIDEO_DIR: list[Path] = []


def video_dir() -> Path:
    """Small clips written once per process (a moving square, a still scene) for the video kinds' cases."""
    if not _VIDEO_DIR:
        import atexit
        import shutil
        import tempfile

        from crispedit.video import demo

        folder = Path(tempfile.mkdtemp(prefix="crispedit-battery-videos-"))
        atexit.register(shutil.rmtree, folder, True)
        demo.write_clip(folder / "moving.mp4", demo.moving_square((64, 48), 3.0, 8.0, 5.0), 8.0)
        demo.write_clip(folder / "still.mp4", demo.still((64, 48), 2.0, 8.0), 8.0)
        _VIDEO_DIR.append(folder)
    return _VIDEO_DIR[0]


def video_items() -> list[Sample]:
    folder = video_dir()
    return [
        Sample(id=sample_id("battery", i), index=i, source_ref=name, meta={"video": {"path": str(folder / name), "suffix": ".mp4"}})
        for i, name in enumerate(["moving.mp4", "still.mp4", "moving.mp4"])
    ]


def video_pairs_made() -> list[Sample]:
    out = pairs(3)
    for s in out:
        s.meta["video_change"] = {"direction": ["left", "right", "up"][s.index], "colour": "red", "t_source": 0.0, "t_target": 1.5}
    return out


def write_videos(root: Path) -> dict[str, Any]:
    import shutil

    folder = root / "videos"
    folder.mkdir()
    shutil.copy(video_dir() / "moving.mp4", folder / "clip_a.mp4")
    (folder / "notes.txt").write_text("not a video")
    (folder / "empty.mp4").write_bytes(b"")
    return {"folder": str(folder)}


STAGE_CASES["video_pairs"] = StageCase({}, video_items)
STAGE_CASES["video_caption"] = StageCase({"backend": "template"}, video_pairs_made)
SOURCE_CASES["videos"] = write_videos


# --- SDXL generators (crispedit/stages/generate_*.py): tiny twins, two candidates where the stage fans out ---


def captioned(n: int = 2) -> list[Sample]:
    """Items whose captions name an object ("square") and a target caption that swaps a word."""
    out = items(n, edit_objects=lambda i: ["square"])
    for s in out:
        s.target_caption = (s.source_caption or "").replace("drawn", "painted")
    return out


STAGE_CASES["sdxl_source"] = StageCase({"base_model": "tiny", "keyword_mask": "optional", "candidates": 2}, captioned)
STAGE_CASES["p2p"] = StageCase({"base_model": "tiny", "max_batch": 2}, captioned)
STAGE_CASES["inpaint"] = StageCase({"inpaint_model": "tiny", "max_batch": 2}, with_masks)
STAGE_CASES["refine"] = StageCase({"base_model": "tiny", "controlnet_model": "tiny", "ip_adapter_model": "tiny", "candidates": 2}, with_masks)
STAGE_CASES["style"] = StageCase({"base_model": "tiny", "controlnet_model": "tiny", "max_batch": 2}, pairs)


# --- DiT4Edit (crispedit/dit4edit/stages.py): tiny PixArt/T5/VAE twins, 32-px pairs, the first one with a mask ---
STAGE_CASES["dit4edit"] = StageCase(
    {"checkpoints": [{"model": "tiny", "max_pixels": 4096}], "text_model": "tiny", "sizes": ["32x32"], "steps": 4, "merge_ratio": 0.5},
    lambda: with_masks(2)[:1] + pairs(2)[1:],
)


# --- editors (crispedit/editors): InstructPix2Pix's tiny twin (the fastest), the input's own target kept as a candidate ---
STAGE_CASES["edit_model"] = StageCase(
    {"candidates": 2, "keep_existing": True, "diffusers": {"pipeline": "StableDiffusionInstructPix2PixPipeline", "max_batch": 2}},
    lambda: pairs(2),
)
STAGE_CASES["recaption"] = StageCase({"backend": "template", "languages": ["zh"]}, pairs)
# --- derived pairs (crispedit/derived/stages): inverses, composites of chain turns, multi-turn chains ---


def with_inverses(n: int = 3) -> list[Sample]:
    """Pairs that carry their inverse instruction, the last one without (its inverse is a reject with the reason)."""
    out = pairs(n)
    for s in out[:-1]:
        s.inverse_instruction = "make it darker"
    return out


def chain_turns(chains: int = 2, turns: int = 3) -> list[Sample]:
    """What a multi_turn stage hands on: per item, turns 1..K as its children, each edited from the one before."""
    out = []
    for item in items(chains):
        image = item.source_image
        for k in range(1, turns + 1):
            target = np.clip(image.astype(np.int16) + 20, 0, 255).astype(np.uint8)
            out.append(item.spawn(k, turn=k, source_image=image, target_image=target, instruction=f"brighten it, step {k}",
                                  inverse_instruction=f"darken it, step {k}", target_caption=f"{item.source_caption}, step {k}"))
            image = target
    return out


STAGE_CASES["inverse"] = StageCase({}, with_inverses, optional={"inverse_instruction"})  # the last pair has none to be had
STAGE_CASES["compose"] = StageCase({"spans": "all"}, chain_turns)
STAGE_CASES["multi_turn"] = StageCase(
    {"turns": 2, "stages": [{"kind": "instruct"}, {"kind": "classical"}], "clip_model": "tiny", "dino_model": "tiny"},
    lambda: items(2),
)
