"""Source kinds, one module per kind: image folders and scikit-image samples, Parquet, Hugging Face datasets,
WebDataset tars, captions files and empty items (the video source lives in crispedit.video)."""
