"""The verified revision of every Hub model a built-in stage or recipe can load, in one table.

A spec that names one of these ids without a revision gets its pin (``ModelSpec`` and the trainer's
``ComponentConfig`` both look here), so ``detector_model: IDEA-Research/grounding-dino-base`` in a
recipe loads the same files next year. A recipe that wants another commit (or ``main``) says so.
Each pin was checked against public traces of that exact commit (cache snapshot paths, Hub tree
pages, hash tables in other projects); the evidence is summarised in docs/models.md.
"""

from __future__ import annotations

PINS: dict[str, str] = {
    "stabilityai/stable-diffusion-xl-base-1.0": "462165984030d82259a11f4367a4eed129e94a7b",
    "diffusers/stable-diffusion-xl-1.0-inpainting-0.1": "115134f363124c53c7d878647567d04daf26e41e",
    "diffusers/controlnet-canny-sdxl-1.0": "eb115a19a10d14909256db740ed109532ab1483c",
    "h94/IP-Adapter": "018e402774aeeddd60609b4ecdb7e298259dc729",
    "PixArt-alpha/PixArt-XL-2-512x512": "50f702106901db6d0f8b67eb88e814c56ded2692",
    "PixArt-alpha/PixArt-XL-2-1024-MS": "b89adadeccd9ead2adcb9fa2825d3fabec48d404",
    "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS": "937eb4b6ca35a159c56494998176988a466f83b5",
    "PixArt-alpha/PixArt-Sigma-XL-2-2K-MS": "cd274f4c8b01de0dcc87b65887dd357d473bf516",
    "IDEA-Research/grounding-dino-base": "12bdfa3120f3e7ec7b434d90674b3396eccf88eb",
    "facebook/sam-vit-huge": "87aecf0df4ce6b30cd7de76e87673c49644bdf67",
    "openai/clip-vit-large-patch14": "32bd64288804d66eefd0ccbe215aa642df71cc41",
    "facebook/dinov2-base": "f9e44c814b77203eaa57a6bdbbd535f21ede1415",
    "facebook/dinov2-with-registers-large": "e4c89a4e05589de9b3e188688a303d0f3c04d0f3",
    "CompVis/stable-diffusion-safety-checker": "cb41f3a270d63d454d385fc2e4f571c487c253c5",
    "MeissonFlow/Meissonic": "08ff13de62d55a6984806076d005089acc63f9ee",
    "google/gemma-2-2b-it": "299a8560bedf22ed1c72a8a11e7dce4a7f9f51f8",
}


def pinned(model_id: str, revision: str | None) -> str | None:
    """The revision to load: the one given, else the verified pin for a known id, else None (a local path)."""
    return revision if revision is not None else PINS.get(model_id)
