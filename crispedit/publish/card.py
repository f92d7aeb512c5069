"""The dataset card (README.md) of a published build, generated from what the build recorded.

Front matter follows the Hub's dataset-card spec (license, task_categories, tags,
size_categories, ``configs`` with ``data_files`` for the pairs and the rejects, and
``dataset_info`` with the features the files really hold), written through ``datasets``'
and ``huggingface_hub``'s own serialisers so both read it back. The body says what the
dataset is, how to load it, its columns, the pipeline with its parameters, models and
thresholds, counts and drops, score histograms, example pairs, model licences and the
papers whose methods the stages implement.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pyarrow.parquet as pq

from crispedit import __version__
from crispedit.core.reader import read_columns
from crispedit.models.terms import SourceLicenses, Terms, TermsDeclaration, applied_terms, license_conflicts
from crispedit.ops.build_info import BuildInfo
from crispedit.ops.plots import score_histograms
from crispedit.publish.preview import read_sample, row_thumbnails, stratified_sample

log = logging.getLogger("crispedit")

ASSETS_DIR = "assets"

#: What the standard columns mean (docs/record.md); other columns are described from the schema.
COLUMN_DOCS = {
    "id": "stable id: a digest of the recipe fingerprint and the item (children: of the parent id and position)",
    "parent_id": "id of the sample this one was derived from (fan-out, an inverse's pair, a chain turn's item), if any",
    "turn": "place in a multi-turn chain (1 = the first edit of the original image); empty outside chains",
    "lineage": "positions among the ancestors' children (with the item, the row's place in the build)",
    "source_image": "the image before the edit",
    "target_image": "the image after the edit",
    "mask": "8-bit soft mask of the edit region (255 = edited); empty for whole-image edits",
    "instruction": "the edit, in words",
    "inverse_instruction": "the edit that takes the target back to the source, where one exists",
    "task": "edit category",
    "source_caption": "caption of the source image",
    "target_caption": "caption of the target image",
    "edit_objects": "keywords of the edited objects; empty for whole-image edits",
    "branch": "which generator made the pair",
    "provenance": "JSON: recipe name and hash, seed, package version, models per stage, what each stage decided",
    "width": "pair width in pixels",
    "height": "pair height in pixels",
    "index": "position of the source item",
    "source_ref": "where the source item came from",
    "source_license": "the source image's licence as the source declared it (`unknown` where it gave none); counted under Terms that apply",
    "stage": "the stage that refused the item",
    "reason": "why (`category: detail`)",
}


@dataclass(frozen=True)
class Method:
    name: str
    pattern: str
    bibtex: str


METHODS = (
    Method("InstructPix2Pix", r"instructpix2pix|instruct-pix2pix|\bip2p\b", """@inproceedings{brooks2023instructpix2pix,
  title     = {InstructPix2Pix: Learning to Follow Image Editing Instructions},
  author    = {Brooks, Tim and Holynski, Aleksander and Efros, Alexei A.},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2023}
}"""),
    Method("Emu Edit", r"emu[ _-]?edit", """@inproceedings{sheynin2024emuedit,
  title     = {Emu Edit: Precise Image Editing via Recognition and Generation Tasks},
  author    = {Sheynin, Shelly and Polyak, Adam and Singer, Uriel and Kirstain, Yuval and Zohar, Amit and Ashual, Oron and Parikh, Devi and Taigman, Yaniv},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2024}
}"""),
    Method("UltraEdit", r"ultra[ _-]?edit", """@inproceedings{zhao2024ultraedit,
  title     = {UltraEdit: Instruction-based Fine-Grained Image Editing at Scale},
  author    = {Zhao, Haozhe and Ma, Xiaojian and Chen, Liang and Si, Shuzheng and Wu, Rujie and An, Kaikai and Yu, Peiyu and Zhang, Minjia and Li, Qing and Chang, Baobao},
  booktitle = {Advances in Neural Information Processing Systems, Datasets and Benchmarks Track},
  year      = {2024}
}"""),
    Method("EditWorld", r"edit[ _-]?world", """@article{yang2024editworld,
  title   = {EditWorld: Simulating World Dynamics for Instruction-Following Image Editing},
  author  = {Yang, Ling and Zeng, Bohan and Liu, Jiaming and Li, Hong and Xu, Minghao and Zhang, Wentao and Yan, Shuicheng},
  journal = {arXiv preprint arXiv:2405.14785},
  year    = {2024}
}"""),
    Method("EditMGT", r"editmgt|crispedit-?2m", """@article{chow2025editmgt,
  title   = {EditMGT: Unleashing Potentials of Masked Generative Transformers in Image Editing},
  author  = {Chow, Wei and others},
  journal = {arXiv preprint arXiv:2512.11715},
  year    = {2025}
}"""),
)

SIZE_CATEGORIES = (
    (1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"),
)


def size_category(rows: int) -> str:
    for bound, label in SIZE_CATEGORIES:
        if rows < bound:
            return label
    return "n>1B" if rows < 10**10 else "n>1T"


@dataclass
class ConfigFiles:
    """One ``configs`` entry: its name, the repository glob, and the staged local files it matches."""

    name: str
    pattern: str
    files: list[Path]


def recipe_license(build: BuildInfo) -> str:
    """The recipe's ``license`` (a Hub licence id), else ``other``."""
    value = build.recipe.get("license")
    return str(value) if value else "other"


@dataclass
class BuildTerms:
    """What binds a build's data: its models' terms (the recipe's ``terms:`` applied) and its rows' source licences."""

    models: dict[str, Terms] = field(default_factory=dict)
    sources: SourceLicenses = field(default_factory=SourceLicenses)

    def conflicts(self, license_id: str) -> list[str]:
        return license_conflicts(license_id, self.models, self.sources)


def recipe_terms(build: BuildInfo) -> dict[str, TermsDeclaration]:
    """The recipe's ``terms:`` entries, validated again (a recipe.yaml may have been edited since the build)."""
    raw = build.recipe.get("terms") or {}
    if not isinstance(raw, dict):
        raise ValueError("recipe.yaml: terms: is a mapping of model id to its terms")
    return {str(key): TermsDeclaration.model_validate(value) for key, value in raw.items()}


def source_licenses(files: list[Any]) -> SourceLicenses:
    """Rows per ``source_license`` value across ``files`` (none counted when no row carries the column)."""
    table = read_columns(files, ["source_license"])
    if "source_license" not in table.column_names:
        return SourceLicenses()
    return SourceLicenses(dict(Counter(v for v in table.column("source_license").to_pylist() if v is not None)))


def build_terms(build: BuildInfo, rejects: bool = True) -> BuildTerms:
    """The terms of what is published: the data rows, and the rejects' when they are published too.

    Raises ValueError (pydantic's ValidationError or TermsError) for a recipe ``terms:`` that cannot stand.
    """
    models = sorted({m for s in build.stages for m in s.models.values()})
    files = [*build.data_files(), *(build.rejects_files() if rejects and build.rejects else [])]
    return BuildTerms(applied_terms(models, recipe_terms(build)), source_licenses(files))


#: Stage kinds that implement a published method (a stage class may also declare ``cites = ("UltraEdit", ...)``).
KIND_METHODS = {
    "ground": ("UltraEdit", "Emu Edit"),  # GroundingDINO + SAM with UltraEdit's thresholds; Emu Edit's soft mask
    "mask_filter": ("UltraEdit",),  # UltraEdit's coverage and contour limits
    "pixel_threshold": ("Emu Edit",),  # Emu Edit's per-pixel thresholding
}


def cited_methods(build: BuildInfo) -> list[Method]:
    """Methods the configured stages implement: by kind, by a stage's ``cites``, or named by a parameter value
    (a taxonomy such as ``editworld`` or ``crispedit2m``). Docstrings are not read: they also name methods they differ from."""
    names = {name for s in build.stages for name in (*KIND_METHODS.get(s.kind, ()), *s.cites)}
    text = " ".join(f"{s.kind} {json.dumps(list(_values(s.params)), default=str)}" for s in build.stages)
    return [m for m in METHODS if m.name in names or re.search(m.pattern, text, flags=re.IGNORECASE)]


def _values(params: Any) -> Any:
    """Leaf values of a parameter tree (keys and descriptions left out)."""
    if isinstance(params, dict):
        for value in params.values():
            yield from _values(value)
    elif isinstance(params, list | tuple):
        for value in params:
            yield from _values(value)
    elif isinstance(params, str):
        yield params


def model_licenses(models: list[str], lookup: bool = False) -> dict[str, str]:
    """Licence of each model (``id@revision``): looked up on the Hub when ``lookup``, else left to its card."""
    out: dict[str, str] = {}
    api = None
    for model in models:
        model_id, _, revision = model.partition("@")
        if model_id == "tiny" or model_id.startswith("tiny:"):
            out[model] = "random-init tiny twin (no weights)"
            continue
        if model_id.startswith((".", "/", "~")):
            out[model] = "local weights"
            continue
        out[model] = "see the model card"
        if lookup:
            try:
                from huggingface_hub import HfApi

                api = api or HfApi()
                info = api.model_info(model_id, revision=revision or None)
                license_id = (info.card_data or {}).get("license") if info.card_data is not None else None
                if license_id:
                    out[model] = str(license_id)
            except Exception as error:  # an offline build node must still get a card
                log.info("licence of %s not found: %s", model_id, error)
    return out


def _feature_text(feature: Any) -> str:
    name = type(feature).__name__
    if name == "Value":
        return str(feature.dtype)
    if name in ("List", "Sequence", "LargeList"):
        return f"list<{_feature_text(feature.feature)}>"
    return name


def _dataset_infos(configs: list[ConfigFiles]) -> Any:
    from datasets import DatasetInfo, Features, SplitDict, SplitInfo
    from datasets.info import DatasetInfosDict

    infos = DatasetInfosDict()
    for config in configs:
        if not config.files:
            continue
        features = Features.from_arrow_schema(pq.read_schema(config.files[0]))
        rows = num_bytes = download = 0
        for path in config.files:
            metadata = pq.read_metadata(path)
            rows += metadata.num_rows
            num_bytes += sum(metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups))
            download += path.stat().st_size
        splits = SplitDict()
        splits.add(SplitInfo(name="train", num_bytes=num_bytes, num_examples=rows))
        infos[config.name] = DatasetInfo(features=features, splits=splits, download_size=download, dataset_size=num_bytes)
    return infos


def card_data(build: BuildInfo, configs: list[ConfigFiles]) -> Any:
    """The YAML front matter as a ``huggingface_hub.DatasetCardData``."""
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCardData

    tags = ["image-editing", "instruction-guided", "image", "crispedit", "synthetic"]
    tags += [f"task-{t}" for t in sorted({str(t) for t in _tasks(build)})][:20]
    data = DatasetCardData(
        license=recipe_license(build),
        pretty_name=build.name,
        task_categories=["image-to-image"],
        tags=tags,
        size_categories=[size_category(build.rows)],
    )
    MetadataConfigs(
        {
            c.name: {"data_files": [{"split": "train", "path": c.pattern}], **({"default": True} if c.name == "default" else {})}
            for c in configs
            if c.files
        }
    ).to_dataset_card_data(data)
    _dataset_infos(configs).to_dataset_card_data(data)
    return data


def _tasks(build: BuildInfo) -> list[str]:
    table = read_columns(build.data_files(), ["task"])
    if "task" not in table.column_names:
        return []
    return sorted({t for t in table.column("task").to_pylist() if t})


#: What HTML would read as markup; the rest of ASCII punctuation is backslash-escaped (CommonMark allows it for all).
_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}


def _text(value: Any) -> str:
    """Untrusted text (an instruction, a reason, a recipe's description) as Markdown that renders as exactly that text.

    Every ASCII punctuation character is escaped (``&<>"`` as HTML entities, the others with a
    backslash), so no tag, image, link, autolink, emphasis or table cell border can form;
    line breaks become spaces (one table cell, one heading).
    """
    out = []
    for char in " ".join(str(value).split()):
        if char in _ENTITIES:
            out.append(_ENTITIES[char])
        elif char.isascii() and not char.isalnum() and not char.isspace():
            out.append("\\" + char)
        else:
            out.append(char)
    return "".join(out)


def _code(value: Any) -> str:
    """Untrusted text as an inline code span: rendered literally, whatever it holds (a renderer escapes HTML in code)."""
    text = " ".join(str(value).split()).replace("|", "\\|")  # GFM splits table cells on pipes even inside code
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _link_target(path: str) -> str:
    """A relative path as a link destination that cannot end early or carry a scheme."""
    return quote(path, safe="/-_.")


def _table(head: list[str], rows: list[list[str]]) -> str:
    """A GFM table of cells already rendered as Markdown (escape untrusted values with :func:`_text` or :func:`_code`)."""
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(c).replace("\n", " ") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _columns_section(configs: list[ConfigFiles], build: BuildInfo) -> str:
    from datasets import Features

    owner = {c: s.name for s in build.stages for c in s.columns}
    parts = []
    for config in configs:
        if not config.files:
            continue
        features = Features.from_arrow_schema(pq.read_schema(config.files[0]))
        rows = []
        for name, feature in features.items():
            meaning = COLUMN_DOCS.get(name)  # our own Markdown
            if meaning is None and name in build.score_columns:
                bounds = build.thresholds.get(name)
                kept = ""
                if bounds:
                    kept = "; kept when " + _code(" and ".join(
                        f"{name} {op} {v:g}" for op, v in ((">=", bounds[0]), ("<=", bounds[1])) if v is not None
                    ))
                meaning = f"score computed by stage {_code(owner.get(name, '?'))}{kept}"
            rows.append([_code(name), _text(_feature_text(feature)), meaning or ""])
        title = "Pairs (`default`)" if config.name == "default" else f"`{config.name}`"
        parts.append(f"### {title}\n\n" + _table(["column", "type", "meaning"], rows))
    return "\n\n".join(parts)


def _pipeline_section(build: BuildInfo) -> str:
    source = build.recipe.get("source") or {}
    params = {k: v for k, v in source.items() if k != "kind"}
    rows = [["source", _text(source.get("kind", "?")), _code(json.dumps(params, default=str)), "", ""]]
    for stage in build.stages:
        thresholds = "; ".join(
            f"{c} in [{'' if lo is None else f'{lo:g}'}, {'' if hi is None else f'{hi:g}'}]" for c, (lo, hi) in stage.thresholds.items()
        )
        models = ", ".join(f"{_text(role)}: {_code(mid)}" for role, mid in stage.models.items())
        rows.append([_text(stage.name), _text(stage.kind), _code(json.dumps(stage.params, default=str, sort_keys=True)), models,
                     _code(thresholds) if thresholds else ""])
    return _table(["stage", "kind", "parameters", "models (id@revision)", "thresholds (kept range)"], rows)


def _counts_section(build: BuildInfo) -> str:
    stages = build.summary.get("stages") or {}
    usage_keys: list[str] = []
    for stats in stages.values():
        usage_keys += [k for k in (stats.get("usage") or {}) if k not in usage_keys]
    rows = []
    for name, stats in stages.items():
        rejected = stats.get("rejected") or {}
        drops = ", ".join(f"{reason}: {n}" for reason, n in rejected.items())
        usage = stats.get("usage") or {}
        cells = [name, stats.get("seen"), stats.get("passed"), sum(rejected.values()), drops, stats.get("seconds"),
                 *[usage.get(k, "") for k in usage_keys]]
        rows.append([_text(c) for c in cells])
    if not rows:
        return "No per-stage counts were recorded."
    return _table(["stage", "seen", "passed", "rejected", "drops by reason", "seconds", *(_text(k) for k in usage_keys)], rows)


def _examples_section(build: BuildInfo, assets: Path, count: int, seed: int) -> str:
    index = read_columns(build.data_files(), ["id", "task", "branch"])
    positions = stratified_sample(index, count, seed)
    if not positions:
        return "No pairs yet."
    folder = assets / "examples"
    rows = []
    for record in read_sample(build.data_files(), positions, index):
        images = row_thumbnails(record, folder, "", assets.parent)
        cells = [f"![source]({_link_target(images['source'])})" if "source" in images else "",
                 f"![target]({_link_target(images['target'])})" if "target" in images else ""]
        rows.append([*cells, _text(record.get("instruction") or ""), _text(record.get("task") or "")])
    return _table(["source", "target", "instruction", "task"], rows)


def _declared_by(t: Terms) -> str:
    """Who says a model's terms are what the card states, and what a recipe's override lifted."""
    if t.origin == "crispedit":
        return "crispedit's record (`crispedit/models/terms.py`)"
    said = f"{_text(t.origin)}" + (f": {_text(t.reason)}" if t.reason else "")
    if t.recorded is not None:
        said += f" (crispedit records: {_text(t.recorded.name)}" + (", non-commercial only" if t.recorded.non_commercial else "") + ")"
    return said


def _terms_section(terms: BuildTerms) -> str:
    parts = ["## Terms that apply\n\nThe models that made the data and the licences of the source images bind its use; the "
             "effective terms of the dataset are the strictest of them together.\n"]
    strict: list[str] = []
    if terms.models:
        rows = [[_code(m), _text(t.name), "non-commercial only" if t.non_commercial else "any",
                 _text("; ".join(t.output_terms) or "none stated"), _declared_by(t)] for m, t in terms.models.items()]
        parts.append("### Models\n\nA `tiny:` model is the random-weight twin a test build ran in place of the model named.\n\n" + _table(["model", "licence", "model use", "output terms", "stated by"], rows) + "\n")
        strict += [f"- {_text(m)}: non-commercial use only ({_text(t.name)})." for m, t in terms.models.items() if t.non_commercial]
        strict += [f"- {_text(clause)} ({_text(t.name)}, for {_text(m)})." for m, t in terms.models.items() for clause in t.output_terms]
    sources = terms.sources
    if sources.rows:
        rows = [[_code(lic), _text(n), _text(", ".join(r) or "none named")] for lic, n, r in sources.ranked()]
        if sources.unknown:
            rows.append([_code("unknown"), _text(sources.unknown), "not known: the source gave these rows no licence"])
        parts.append("### Source images\n\nThe licence of each row's source image, as the source declared it (the `source_license` "
                     f"column), over the {sources.rows:,} published rows, strictest first.\n\n"
                     + _table(["licence", "rows", "restrictions"], rows) + "\n")
        strict += [f"- {_text(n)} source rows are under {_code(lic)}: {_text(', '.join(r))}." for lic, n, r in sources.ranked() if r]
        if sources.unknown:
            strict.append(f"- {_text(sources.unknown)} source rows carry no licence (`unknown`): check their terms before use.")
    strict += [f"- The recipe overrides crispedit's record for {_text(m)} and lifts: {_text('; '.join(t.loosened))} "
               f"(overridden by the recipe: {_text(t.reason)})." for m, t in terms.models.items() if t.loosened]
    parts.append("Effective terms:\n\n" + "\n".join(strict) if strict else "No model and no source licence adds a restriction.")
    return "\n".join(parts) + "\n"


def render_card(
    build: BuildInfo,
    configs: list[ConfigFiles],
    tree: Path,
    *,
    repo_id: str | None = None,
    examples: int = 6,
    seed: int = 0,
    lookup_licenses: bool = False,
    terms: BuildTerms | None = None,
) -> str:
    """README.md text; plots and example thumbnails are written under ``tree/assets/``.

    ``terms`` are what publish checked the licence against (default: read from the build, for the configs given).
    """
    from huggingface_hub import DatasetCard

    assets = tree / ASSETS_DIR
    data = card_data(build, configs)
    name = repo_id or build.name
    literal = json.dumps(" ".join(str(name).split())).replace("`", "\\u0060")  # a Python string; cannot end the code block
    rejects_config = next((c for c in configs if c.name == "rejects" and c.files), None)
    kept = read_columns(build.data_files(), [*build.score_columns, "task"])
    rejected = read_columns(build.rejects_files(), [*build.score_columns, "task"]) if rejects_config else None
    plots = score_histograms(kept, rejected, build.score_columns, build.thresholds, assets)
    models = sorted({m for s in build.stages for m in s.models.values()})
    licenses = model_licenses(models, lookup_licenses)
    methods = cited_methods(build)

    sections = [f"# {_text(build.name)}\n"]
    description = str(build.recipe.get("description") or "").strip()
    if description:  # the recipe's words, as text: paragraphs kept, no markup of theirs
        sections.append("\n\n".join(_text(part) for part in re.split(r"\n\s*\n", description) if part.strip()) + "\n")
    status = "" if build.complete else (
        f"\n> **Partial build**: {len(build.shards)} of {build.shards_total} shards were committed when this was published.\n"
    )
    sections.append(
        f"An instruction-based image-editing dataset of (source image, instruction, target image) pairs: "
        f"**{build.rows:,} pairs** kept (refused candidates: {build.rejects:,}), built by "
        f"crispedit {_text(build.summary.get('crispedit_version', __version__))} from the recipe "
        f"{_code(build.name)} (fingerprint {_code(build.summary.get('fingerprint') or build.manifest.get('fingerprint', '?'))}, "
        f"seed {_text(build.recipe.get('seed', 0))}). The recipe is `recipe.yaml` in this repository; the counts are in `summary.json`.\n"
        + status
    )
    load = [
        "## Load it\n",
        "```python",
        "from datasets import load_dataset",
        "",
        f'pairs = load_dataset({literal}, split="train")  # images decode to PIL.Image',
    ]
    if rejects_config:
        load.append(f'rejects = load_dataset({literal}, "rejects", split="train")  # what the filters refused, and why')
    load += ["```", "", "Stream it with `streaming=True`; each file is Parquet with row groups of at most ~100 MB and a page index."]
    sections.append("\n".join(load) + "\n")
    sections.append("## Example pairs\n\n" + _examples_section(build, assets, examples, seed) + "\n")
    sections.append("## Columns\n\n" + _columns_section(configs, build) + "\n")
    sections.append(
        "## Pipeline\n\nStages in order, with the parameters the build ran with (defaults filled in), "
        "the models and revisions they loaded, and the score range each filter kept.\n\n" + _pipeline_section(build) + "\n"
    )
    sections.append("## Counts\n\nPer stage: items seen, passed and refused, refusals by reason, and time.\n\n" + _counts_section(build) + "\n")
    if plots:
        lines = ["## Score distributions\n", "Kept pairs per task (lines), refused ones (grey) and the thresholds (dashed).\n"]
        lines += [f"![{_text(c)}]({_link_target(p.relative_to(tree).as_posix())})" for c, p in plots.items()]
        sections.append("\n".join(lines) + "\n")
    if licenses:
        rows = [[_code(m), _text(lic)] for m, lic in licenses.items()]
        sections.append("## Models and their licences\n\nThe outputs of these models are in the data; their licences may bind its use.\n\n"
                        + _table(["model", "licence"], rows) + "\n")
    terms = terms if terms is not None else build_terms(build, rejects=rejects_config is not None)
    if terms.models or terms.sources.rows:
        sections.append(_terms_section(terms))
    sections.append(
        "## License\n\n"
        + (f"{_code(recipe_license(build))}, as the recipe declares." if recipe_license(build) != "other"
           else "The recipe declares no licence (`license: other`). Check the source images' and the models' terms before use.")
        + "".join(f"\n\n> **Contradicted by the terms that apply** (published with `--force-license`): {_text(c)}."
                  for c in terms.conflicts(recipe_license(build)))
        + "\n"
    )
    cite = ["## Citation\n"]
    if methods:
        cite.append("The stages implement methods from these papers; please cite them:\n")
        for method in methods:
            cite += [f"{method.name}:", "", "```bibtex", method.bibtex, "```", ""]
    else:
        cite.append("No published method is reproduced by this recipe's stages.\n")
    sections.append("\n".join(cite))
    body = "\n".join(sections)
    card = DatasetCard("---\n" + data.to_yaml() + "\n---\n\n" + body)
    return str(card)
