"""The bundled EditMGT trainer: reference-stream masked generative transformer, MaskGIT
sampling with region-hold, and evaluation. See docs/trainer.md.

Submodules import torch/diffusers/transformers; this package init stays import-free so
that `crispedit.mgt.cli` can be registered without loading them.
"""
