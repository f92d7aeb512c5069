"""Putting a finished build in front of people: the Hugging Face Hub (or any fsspec URL), the dataset card, the preview pages."""
