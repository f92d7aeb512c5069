"""The video stages: the ``videos`` source, ``video_pairs`` and ``video_caption``."""
