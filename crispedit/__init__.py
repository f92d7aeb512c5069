"""crispedit: build instruction-based image-editing datasets from one YAML recipe."""

__version__ = "0.1.0"
