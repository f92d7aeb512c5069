"""Model wrappers several capabilities share: model specs and tiny twins, CLIP/DINOv2 scoring, the LLM client.

Importing this package loads nothing; each module imports torch or transformers only where it runs a model."""
