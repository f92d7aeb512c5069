"""Sources: where items come from, numbered 0..N-1 in an order that never changes.

A stable numbering is what makes ids, seeds and shard names deterministic, and what lets
a rerun skip exactly the shards that were committed.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import Field, field_validator

from crispedit.images import ImageRejected, fit_within, read_image
from crispedit.limits import MAX_FAN_OUT, MAX_ITEMS
from crispedit.sample import Sample, sample_id
from crispedit.stages.base import BuildContext, StageParams
from crispedit.storage import DEFAULT_MAX_BYTES, InputRefused, is_url, read_input


class SourceError(ValueError):
    """The files a source names cannot be read as the recipe says (corrupt, empty, another schema).

    The message is one line that names the file; ``crispedit build`` prints it and exits 2.
    """


class Source(ABC):
    """The first stage: turns item indices [start, end) into samples (rejects included)."""

    kind: ClassVar[str]
    Params: ClassVar[type[StageParams]] = StageParams
    #: Sample fields and ``meta.KEY``s every item arrives with (checked by ``crispedit validate``).
    provides: ClassVar[tuple[str, ...]] = ("source_image", "source_caption")
    name = "source"

    def __init__(self, params: StageParams, context: BuildContext) -> None:
        self.params = params
        self.context = context

    def outputs(self) -> set[str]:
        return set(self.provides)

    def locations(self) -> list[str]:
        """The files and folders the source reads (as the recipe names them), so a build never writes over them.

        Taken from the parameters that name inputs; a glob or brace range counts as the folder it
        searches, and a name that is no local path (a Hub dataset id) as nothing.
        """
        found: list[str] = []
        for name in INPUT_PARAMETERS:
            value = getattr(self.params, name, None)
            for item in value if isinstance(value, list | tuple) else [value]:
                if isinstance(item, str | Path) and str(item):
                    text = str(item)
                    cut = min((i for i in (text.find(c) for c in "*?[{") if i >= 0), default=-1)
                    if cut >= 0:
                        text = text[:cut].rsplit("/", 1)[0] or "."
                    if is_url(text) or Path(text).exists():
                        found.append(text)
        return found

    @abstractmethod
    def count(self) -> int:
        """How many items there are. Must be cheap and must not depend on file contents."""

    @abstractmethod
    def load(self, start: int, end: int) -> list[Sample]:
        """One sample per index in [start, end), in order; unreadable items become rejects."""


#: Source parameters that name what a source reads.
INPUT_PARAMETERS = ("folder", "files", "base", "path", "file", "list_file", "parquet", "webdataset", "shards")

T = TypeVar("T", bound=type[Source])
SOURCES: dict[str, type[Source]] = {}


def register_source(cls: T) -> T:
    SOURCES[cls.kind] = cls
    return cls


class ImageSourceParams(StageParams):
    edits_per_image: int = Field(1, ge=1, le=MAX_FAN_OUT, description="items per image: each gets its own edit")
    max_side: int | None = Field(512, ge=16, description="downscale so the long side is at most this")
    size_multiple: int = Field(8, ge=1, description="round width and height down to a multiple of this")
    max_pixels: int = Field(64_000_000, ge=1, description="refuse larger images before decoding them")
    max_bytes: int = Field(
        DEFAULT_MAX_BYTES, ge=1, description="refuse larger image files (`file too large`) before reading them; devices and FIFOs are refused too",
    )
    limit: int | None = Field(None, ge=1, le=MAX_ITEMS, description="use at most this many images")
    background: int = Field(255, ge=0, le=255, description="gray level alpha is composited onto")


@dataclass(frozen=True)
class ImageEntry:
    ref: str
    path: Path
    caption: str


class ImageListSource(Source):
    """Shared loading for sources that are a fixed list of image files with captions."""

    params: ImageSourceParams
    provides = ("source_image", "source_caption", "meta.image_index", "meta.variant")

    @abstractmethod
    def entries(self) -> list[ImageEntry]:
        """The image files, in their fixed order."""

    def _entries(self) -> list[ImageEntry]:
        if not hasattr(self, "_cached_entries"):
            found = self.entries()
            self._cached_entries = found[: self.params.limit] if self.params.limit else found
        return self._cached_entries

    def count(self) -> int:
        return len(self._entries()) * self.params.edits_per_image

    def load(self, start: int, end: int) -> list[Sample]:
        entries = self._entries()
        per = self.params.edits_per_image
        decoded: dict[int, tuple[Any, list[str]] | ImageRejected] = {}
        samples = []
        for index in range(start, end):
            which, variant = divmod(index, per)
            entry = entries[which]
            sample = Sample(
                id=sample_id(self.context.fingerprint, index),
                index=index,
                source_ref=entry.ref,
                source_caption=entry.caption,
                meta={"image_index": which, "variant": variant},
            )
            if which not in decoded:
                try:
                    pixels, notes = read_image(entry.path, self.params.max_pixels, self.params.background, self.params.max_bytes)
                    decoded[which] = (fit_within(pixels, self.params.max_side, self.params.size_multiple), notes)
                except ImageRejected as rejected:
                    decoded[which] = rejected
            result = decoded[which]
            if isinstance(result, ImageRejected):
                sample.fail(self.name, str(result))
            else:
                pixels, notes = result
                sample.source_image = pixels
                sample.provenance["source"] = {"ref": entry.ref, "conversions": notes}
            samples.append(sample)
        return samples


class FolderParams(ImageSourceParams):
    folder: Path = Field(description="the folder of images (relative paths are relative to the working directory)")
    recursive: bool = Field(True, description="look in subfolders too")
    captions: str = Field(
        "filename",
        pattern="^(filename|sidecar)$",
        description="'filename': a caption from the file name; 'sidecar': NAME.txt beside each image",
    )
    caption_template: str = Field("a photo of {name}", description="caption made from the file name ({name}) when there is no sidecar")

    @field_validator("folder")
    @classmethod
    def _exists(cls, folder: Path) -> Path:
        if not folder.is_dir():
            raise ValueError(f"no such folder: {folder}")
        return folder


@register_source
class FolderSource(ImageListSource):
    """Every file under a folder, in sorted path order. Non-image files become rejects, not skips."""

    kind = "folder"
    Params = FolderParams
    params: FolderParams

    def entries(self) -> list[ImageEntry]:
        root = self.params.folder
        pattern = "**/*" if self.params.recursive else "*"
        files = sorted(
            (p for p in root.glob(pattern) if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)),
            key=lambda p: p.relative_to(root).as_posix(),
        )
        if self.params.captions == "sidecar":
            files = [p for p in files if p.suffix.lower() != ".txt"]
        return [ImageEntry(p.relative_to(root).as_posix(), p, self._caption(p)) for p in files]

    def _caption(self, path: Path) -> str:
        if self.params.captions == "sidecar":
            sidecar = path.with_suffix(".txt")
            if sidecar.is_file():
                try:
                    return read_input(sidecar, self.params.max_bytes).decode("utf-8", errors="replace").strip()
                except InputRefused:
                    pass  # an oversized or special sidecar: the file-name caption below
        words = re.sub(r"[_\-.]+", " ", path.stem)
        words = re.sub(r"\d+", " ", words).strip()
        return self.params.caption_template.format(name=re.sub(r"\s+", " ", words) or "something")


#: scikit-image's bundled photographs (no download needed), with honest captions.
SKIMAGE_PHOTOS: dict[str, tuple[str, str]] = {
    "astronaut": ("astronaut.png", "a portrait of an astronaut in a white spacesuit in front of an American flag"),
    "chelsea": ("chelsea.png", "a close-up photo of a tabby cat"),
    "coffee": ("coffee.png", "a cup of coffee on a saucer with a spoon"),
    "rocket": ("rocket.jpg", "a rocket on a launch pad under a blue sky"),
    "hubble_deep_field": ("hubble_deep_field.jpg", "a deep-space telescope image full of distant galaxies"),
    "immunohistochemistry": ("ihc.png", "a microscope image of stained tissue"),
    "motorcycle": ("motorcycle_left.png", "a red motorcycle parked in a garage"),
    "camera": ("camera.png", "a black and white photo of a man with a camera on a tripod"),
    "coins": ("coins.png", "a grayscale photo of old coins on a dark background"),
    "retina": ("retina.jpg", "a photograph of the retina of a human eye"),
    "colorwheel": ("color.png", "a color wheel"),
    "logo": ("logo.png", "the scikit-image logo"),
}


class SkimageParams(ImageSourceParams):
    photos: list[str] = Field(
        default_factory=lambda: ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "motorcycle", "immunohistochemistry", "camera"],
        description="which of scikit-image's bundled photographs to use, in this order",
    )

    @field_validator("photos")
    @classmethod
    def _known(cls, photos: list[str]) -> list[str]:
        unknown = [p for p in photos if p not in SKIMAGE_PHOTOS]
        if unknown:
            raise ValueError(f"unknown photos {unknown}; known: {sorted(SKIMAGE_PHOTOS)}")
        return photos


@register_source
class SkimageSource(ImageListSource):
    """The photographs that ship inside scikit-image: a real dataset with no network at all."""

    kind = "skimage"
    Params = SkimageParams
    params: SkimageParams

    def entries(self) -> list[ImageEntry]:
        from skimage import data as skdata

        folder = Path(skdata.data_dir)
        return [
            ImageEntry(f"skimage:{name}", folder / SKIMAGE_PHOTOS[name][0], SKIMAGE_PHOTOS[name][1])
            for name in self.params.photos
        ]
