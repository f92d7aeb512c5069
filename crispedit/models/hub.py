"""What a build fetches from the Hub: the files each model's loader reads, their size, and the commit they came from.

Stages declare their models with :meth:`crispedit.core.stage.Stage.model_files` (a
:class:`ModelFiles` per model: the spec and the patterns of the files its loader opens), so
``crispedit models RECIPE`` can list, size and pre-fetch exactly those files, and a build with
``HF_HUB_OFFLINE=1`` then loads from that cache. Every Hub load goes through
:func:`crispedit.models.loading.load_model`, which calls :func:`check_loaded` here: the commit the
cache resolved the revision to must be the pinned one, or the build stops naming the model.

Patterns are matched the way huggingface_hub's ``allow_patterns`` are (fnmatch on the whole path).
A weights entry is a list of alternatives in the loaders' order (safetensors first, then the
``.bin`` pickles): with the Hub's file listing the first one present is chosen, as the loader would.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crispedit.models.spec import ModelSpec

log = logging.getLogger(__name__)

COMMIT = re.compile(r"[0-9a-f]{40}")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
#: Tokenizer files transformers reads when present (the loader asks for each; absent ones are skipped).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt", "vocab.txt", "spiece.model", "tokenizer.model")
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
#: The SDXL pipelines' components (diffusers' model_index.json of the base and inpainting checkpoints).
SDXL_COMPONENTS = {"scheduler": "scheduler", "text_encoder": "transformers", "text_encoder_2": "transformers",
                   "tokenizer": "tokenizer", "tokenizer_2": "tokenizer", "unet": "diffusers", "vae": "diffusers"}


class RevisionMismatch(RuntimeError):
    """The Hub (or the cache) resolved a pinned revision to another commit: the files are not the pinned ones."""


@dataclass(frozen=True)
class ModelFiles:
    """One model a stage loads: its spec, the files its loader opens (``files``) and weights alternatives."""

    spec: ModelSpec
    files: tuple[str, ...] = ()
    weights: tuple[tuple[str, ...], ...] = ()  # each a group of patterns; the first group the repo has is used
    pipeline: bool = False  # a diffusers pipeline whose components come from model_index.json when listed
    variant: str | None = None

    @property
    def hub(self) -> bool:
        """A Hub repository (not a tiny twin, not a local folder): what ``models`` lists and the build checks."""
        return is_hub_id(self.spec)

    def patterns(self, listing: Sequence[str] | None = None) -> list[str]:
        """The allow_patterns for this model: ``files`` plus, per weights alternative list, the one the repo has."""
        out = list(self.files)
        groups: dict[str, list[tuple[str, ...]]] = {}
        for group in self.weights:  # alternatives share the folder of their first pattern
            groups.setdefault(group[0].rpartition("/")[0], []).append(group)
        if self.pipeline and listing is not None:
            # diffusers' offline load checks the cached snapshot against ITS patterns, which take the variant's
            # weights from every folder holding weights (SDXL base: vae_1_0/ too), components or not
            for folder in sorted({p.rpartition("/")[0] for p in listing if "/" in p} - set(groups)):
                extra = weights_of(folder, "diffusion_pytorch_model", self.variant, True) + weights_of(folder, "model", self.variant, True)
                if any(_matches(p, g) for g in extra for p in listing):
                    groups[folder] = list(extra)
        for alternatives in groups.values():
            chosen = alternatives[0]
            if listing is not None:
                chosen = next((g for g in alternatives if any(_matches(p, g) for p in listing)), alternatives[0])
            out += chosen
        return out


@dataclass
class ModelReport:
    """One row of ``crispedit models``: where a model comes from, what is fetched, how big, under which licence."""

    stage: str
    key: str
    id: str
    revision: str | None
    patterns: list[str]
    files: list[str] | None = None  # the repo's files the patterns select (None: the Hub was not reachable)
    size: int | None = None
    license: str = "unknown"
    commit: str | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "key": self.key, "id": self.id, "revision": self.revision, "patterns": self.patterns,
                "files": self.files, "size": self.size if self.size is not None else "unknown", "license": self.license,
                "commit": self.commit, **({"note": self.note} if self.note else {})}


# --- patterns ------------------------------------------------------------------------------------


def _in(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name


def weights_of(folder: str, stem: str, variant: str | None = None, safetensors_only: bool = False) -> tuple[tuple[str, ...], ...]:
    """The weight files of one model folder: single file, shards and index, safetensors then ``.bin``."""
    v = f".{variant}" if variant else ""
    groups = [(_in(folder, f"{stem}{v}.safetensors"), _in(folder, f"{stem}{v}-*-of-*.safetensors"),
               _in(folder, f"{stem}.safetensors.index{v}.json"))]
    if not safetensors_only:
        bin_stem = "pytorch_model" if stem == "model" else stem
        groups.append((_in(folder, f"{bin_stem}{v}.bin"), _in(folder, f"{bin_stem}{v}-*-of-*.bin"), _in(folder, f"{bin_stem}.bin.index{v}.json")))
    return tuple(groups)


def transformers_files(spec: ModelSpec, folder: str = "", tokenizer: bool = False, processor: bool = False,
                       variant: str | None = None) -> ModelFiles:
    """A transformers model (``from_pretrained`` of a model class, and its tokenizer or image processor)."""
    names = ["config.json", *(TOKENIZER_FILES if tokenizer else ()), *(PROCESSOR_FILES if processor else ())]
    return ModelFiles(spec, tuple(_in(folder, n) for n in names), weights_of(folder, "model", variant), variant=variant)


def component_files(folder: str, library: str, variant: str | None, safetensors_only: bool = False) -> tuple[list[str], tuple[tuple[str, ...], ...]]:
    """(files, weights) of one diffusers component folder by the library that loads it."""
    if library == "scheduler":
        return [_in(folder, "scheduler_config.json")], ()
    if library == "tokenizer":
        return [_in(folder, n) for n in TOKENIZER_FILES], ()
    if library == "transformers":
        return [_in(folder, "config.json")], weights_of(folder, "model", variant, safetensors_only)
    return [_in(folder, "config.json")], weights_of(folder, "diffusion_pytorch_model", variant, safetensors_only)


def diffusers_files(spec: ModelSpec, folders: dict[str, str], variant: str | None = None, pipeline: bool = False,
                    safetensors_only: bool = False) -> ModelFiles:
    """Diffusers components by folder -> library (``scheduler``, ``tokenizer``, ``transformers``, ``diffusers``);
    ``pipeline`` adds ``model_index.json`` (and lets the repo's own model_index name the components)."""
    files: list[str] = ["model_index.json"] if pipeline else []
    weights: list[tuple[str, ...]] = []
    for folder, library in folders.items():
        more, groups = component_files(folder, library, variant, safetensors_only)
        files += more
        weights += groups
    return ModelFiles(spec, tuple(files), tuple(weights), pipeline=pipeline, variant=variant)


def sdxl_pipeline_files(spec: ModelSpec, variant: str | None = None) -> ModelFiles:
    """An SDXL pipeline as ``load_pipeline`` loads it (``use_safetensors=True``)."""
    return diffusers_files(spec, SDXL_COMPONENTS, variant, pipeline=True, safetensors_only=True)


def controlnet_files(spec: ModelSpec, variant: str | None = None) -> ModelFiles:
    """A diffusers model at the repo's root (``ControlNetModel.from_pretrained``)."""
    return diffusers_files(spec, {"": "diffusers"}, variant)


def ip_adapter_files(spec: ModelSpec, weight: str) -> ModelFiles:
    """An IP-Adapter file and the CLIP vision encoder in its folder's ``image_encoder/`` (``attach_ip_adapter``)."""
    subfolder = weight.rpartition("/")[0]
    encoder = transformers_files(spec, _in(subfolder, "image_encoder"))
    return ModelFiles(spec, (weight, *encoder.files), encoder.weights)


def scorer_files(clip: ModelSpec | None, dino: ModelSpec | None) -> dict[str, ModelFiles]:
    """CLIP (model, tokenizer, processor) and DINOv2 (model, processor) as crispedit.models.clip loads them."""
    files = {}
    if clip is not None:
        files["clip"] = transformers_files(clip, tokenizer=True, processor=True)
    if dino is not None:
        files["dino"] = transformers_files(dino, processor=True)
    return files


def merged(a: ModelFiles, b: ModelFiles) -> ModelFiles:
    """Two file sets of the same repository as one (one download, one row)."""
    return ModelFiles(a.spec, a.files + tuple(f for f in b.files if f not in a.files), a.weights + b.weights,
                      a.pipeline or b.pipeline, a.variant)


def _matches(path: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatch(path, p) for p in patterns)


def is_hub_id(spec: ModelSpec) -> bool:
    """A Hub repository id: not the tiny twin, not a folder on this machine, shaped ``org/name``."""
    if spec.is_tiny or Path(spec.id).expanduser().exists():
        return False
    return bool(_HUB_ID.fullmatch(spec.id))


# --- the Hub and the cache ------------------------------------------------------------------------


def _api() -> Any:
    from huggingface_hub import HfApi

    return HfApi(token=os.environ.get("HF_TOKEN") or None)  # the token only from the environment, by name


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def model_listing(model: ModelFiles) -> tuple[str | None, dict[str, int], str | None]:
    """(commit, {path: size}, the model card's licence tag) of the model's revision, from ``model_info(files_metadata=True)``."""
    info = _api().model_info(model.spec.id, revision=model.spec.revision, files_metadata=True)
    card_license = (info.card_data or {}).get("license") if info.card_data is not None else None
    return info.sha, {s.rfilename: int(s.size or 0) for s in info.siblings or []}, card_license


def pipeline_components(model: ModelFiles) -> ModelFiles:
    """A pipeline whose components were not declared: its model_index.json names them (fetched, a few hundred bytes)."""
    if not model.pipeline or model.weights:
        return model
    import json

    from huggingface_hub import hf_hub_download

    index = json.loads(Path(hf_hub_download(model.spec.id, "model_index.json", revision=model.spec.revision,
                                            token=os.environ.get("HF_TOKEN") or None)).read_text(encoding="utf-8"))
    folders = {}
    for name, value in index.items():
        if name.startswith("_") or not isinstance(value, list) or len(value) != 2 or value[0] is None:
            continue
        library, cls = value
        folders[name] = ("scheduler" if "Scheduler" in cls else "tokenizer" if "Tokenizer" in cls or "Processor" in cls
                         else "transformers" if library == "transformers" else "diffusers")
    return diffusers_files(model.spec, folders, model.variant, pipeline=True)


def check_commit(spec: ModelSpec, commit: str | None) -> None:
    """Refuse a pinned commit that resolved to another one (a branch or tag pin resolves to whatever it names)."""
    if commit is None or spec.revision is None or not COMMIT.fullmatch(spec.revision):
        return
    if commit != spec.revision:
        raise RevisionMismatch(
            f"{spec.id}: pinned to commit {spec.revision}, but the Hub resolved it to {commit}; the files are not the "
            "pinned ones (a mirror or cache serving another snapshot). Fix the mirror, or set `revision:` on the model")


def cached_commit(repo_id: str, revision: str | None, cache_dir: str | Path | None = None) -> str | None:
    """The commit the local Hub cache resolves ``revision`` to (``refs/REV``, else a snapshot named REV), or None."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    folder = Path(cache_dir or constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")
    revision = revision or "main"
    ref = folder / "refs" / revision
    if ref.is_file():
        return ref.read_text(encoding="utf-8").strip() or None
    if (folder / "snapshots" / revision).is_dir():
        return revision
    return None


#: What this process loaded from the Hub: ``id@revision`` -> the commit the cache resolved it to.
LOADED: dict[str, str | None] = {}


def check_loaded(spec: ModelSpec) -> str | None:
    """After a Hub load: the commit the loader's files came from, checked against the pin (local paths: nothing)."""
    if not is_hub_id(spec):
        return None
    commit = cached_commit(spec.id, spec.revision)
    check_commit(spec, commit)
    LOADED[spec.describe()] = commit
    return commit


def resolve_commit(spec: ModelSpec) -> str | None:
    """The commit a build will load for ``spec``: from the cache, else (online) the Hub's ``model_info().sha``.

    None when neither knows (offline with nothing cached, or the Hub unreachable): the loader then fails
    or succeeds on its own, and :func:`check_loaded` checks what it read.
    """
    commit = cached_commit(spec.id, spec.revision)
    if commit is None and not _offline():
        try:
            commit = _api().model_info(spec.id, revision=spec.revision).sha
        except Exception as error:  # unreachable, gated without a token: not this check's business
            log.info("%s: commit not resolved (%s)", spec.describe(), type(error).__name__)
    check_commit(spec, commit)
    return commit


def download(model: ModelFiles, cache_dir: str | Path | None = None, patterns: Sequence[str] | None = None) -> tuple[str, list[str]]:
    """Fetch exactly the model's files at its revision into the Hub cache; returns (commit, files in the snapshot).

    ``patterns``: what :func:`report` resolved against the Hub's listing; None: the declared ones (a pipeline's
    components read from its model_index.json first).
    """
    from huggingface_hub import snapshot_download

    patterns = list(patterns) if patterns is not None else pipeline_components(model).patterns()
    folder = snapshot_download(model.spec.id, revision=model.spec.revision, allow_patterns=patterns,
                               cache_dir=str(cache_dir) if cache_dir else None, token=os.environ.get("HF_TOKEN") or None)
    commit = cached_commit(model.spec.id, model.spec.revision, cache_dir) or Path(folder).name
    check_commit(model.spec, commit)
    snapshot = Path(folder).parent / commit
    fetched = sorted(str(p.relative_to(snapshot)) for p in snapshot.rglob("*") if p.is_file())
    return commit, fetched


def report(stage: str, key: str, model: ModelFiles, online: bool = True) -> ModelReport:
    """The row for one model: patterns, and with the Hub reachable the files they select, their size and the commit.

    The licence is crispedit/models/terms.py's for the id, else the model card's ``license`` tag (as the
    dataset card reads it), else unknown.
    """
    from crispedit.models.terms import terms_for

    terms = terms_for(model.spec.id)
    row = ModelReport(stage, key, model.spec.id, model.spec.revision, model.patterns(),
                      license=f"{terms.name} ({terms.license})" if terms else "unknown")
    undeclared = model.pipeline and not model.weights
    if not online or _offline():
        row.note = "offline: sizes unknown" + ("; a pipeline's components are read from its model_index.json on the Hub" if undeclared else "")
        return row
    try:
        full = pipeline_components(model)
        commit, sizes, card_license = model_listing(full)
    except RevisionMismatch:
        raise
    except Exception as error:  # unreachable, gated, not found: the listing still says what would be fetched
        row.note = f"Hub not reachable or refused ({type(error).__name__}): sizes unknown"
        return row
    check_commit(model.spec, commit)
    row.patterns = full.patterns(list(sizes))
    row.files = sorted(p for p in sizes if _matches(p, row.patterns))
    row.size = sum(sizes[p] for p in row.files)
    row.commit = commit
    if terms is None and card_license:
        row.license = f"{card_license} (the model card's tag)"
    return row


def plan_models(stages: Iterable[Any]) -> list[tuple[str, str, ModelFiles]]:
    """(stage name, key, files) of every Hub model the stages (constructed, not set up) can load, in order, each repo@revision once."""
    out: list[tuple[str, str, ModelFiles]] = []
    seen: dict[str, int] = {}
    for stage in stages:
        for key, model in stage.model_files().items():
            if not model.hub:
                continue
            name = model.spec.describe()
            if name in seen:  # a second stage loading the same snapshot: one download, the union of files
                at = seen[name]
                out[at] = (out[at][0], out[at][1], merged(out[at][2], model))
                continue
            seen[name] = len(out)
            out.append((stage.name, key, model))
    return out


def resolved_models(stages: Iterable[Any]) -> dict[str, dict[str, dict[str, str | None]]]:
    """stage -> key -> {id, revision, commit} for the build's manifest; refuses a pin that resolves elsewhere.

    Local folders are recorded as paths (no revision to check); the commit is None where neither the
    cache nor the Hub could say (the loaders then check what they read, see :func:`check_loaded`).
    """
    out: dict[str, dict[str, dict[str, str | None]]] = {}
    commits: dict[str, str | None] = {}
    for stage in stages:
        for key, model in stage.model_files().items():
            spec = model.spec
            if spec.is_tiny:
                continue
            if not model.hub:
                out.setdefault(stage.name, {})[key] = {"path": spec.id}
                continue
            if spec.describe() not in commits:
                commits[spec.describe()] = resolve_commit(spec)
            out.setdefault(stage.name, {})[key] = {"id": spec.id, "revision": spec.revision, "commit": commits[spec.describe()]}
    return out
