"""The ``folder`` and ``skimage`` sources: a fixed, sorted list of image files with captions."""

from __future__ import annotations

import re
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from pydantic import Field, field_validator

from crispedit.core.images import ImageRejected, fit_within, read_image
from crispedit.core.limits import MAX_FAN_OUT, MAX_ITEMS
from crispedit.core.sample import Sample, sample_id
from crispedit.core.source import Source, register_source
from crispedit.core.stage import StageParams
from crispedit.core.storage import DEFAULT_MAX_BYTES, InputRefused, read_input


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


IP = TypeVar("IP", bound=ImageSourceParams)
#: A decoded image and its conversion notes, or the reason it could not be decoded.
Decoded = tuple[np.ndarray, list[str]] | str


def item_sample(source: Source, index: int, per: int, ref: str, caption: str | None, decoded: Decoded) -> Sample:
    """Item ``index`` of a source with ``per`` items per image: its sample, with the image or the reason it has none."""
    which, variant = divmod(index, per)
    sample = Sample(
        id=sample_id(source.context.fingerprint, index),
        index=index,
        source_ref=ref,
        source_caption=caption,
        meta={"image_index": which, "variant": variant},
    )
    if isinstance(decoded, str):
        sample.fail(source.name, decoded)
    else:
        pixels, notes = decoded
        sample.source_image = pixels
        sample.provenance["source"] = {"ref": ref, "conversions": notes}
    return sample


class ImageListSource(Source[IP]):
    """Shared loading for sources that are a fixed list of image files with captions."""

    def outputs(self) -> set[str]:
        return {"source_image", "source_caption", "meta.image_index", "meta.variant"}

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
        decoded: dict[int, Decoded] = {}
        samples = []
        for index in range(start, end):
            which = index // per
            entry = entries[which]
            if which not in decoded:  # once per image, whatever its number of items
                try:
                    pixels, notes = read_image(entry.path, self.params.max_pixels, self.params.background, self.params.max_bytes)
                    decoded[which] = (fit_within(pixels, self.params.max_side, self.params.size_multiple), notes)
                except ImageRejected as rejected:
                    decoded[which] = str(rejected)
            samples.append(item_sample(self, index, per, entry.ref, entry.caption, decoded[which]))
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
class FolderSource(ImageListSource[FolderParams]):
    """Every file under a folder, in sorted path order. Non-image files become rejects, not skips."""

    kind = "folder"

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
class SkimageSource(ImageListSource[SkimageParams]):
    """The photographs that ship inside scikit-image: a real dataset with no network at all."""

    kind = "skimage"

    def entries(self) -> list[ImageEntry]:
        from skimage import data as skdata

        folder = Path(skdata.data_dir)
        return [
            ImageEntry(f"skimage:{name}", folder / SKIMAGE_PHOTOS[name][0], SKIMAGE_PHOTOS[name][1])
            for name in self.params.photos
        ]
