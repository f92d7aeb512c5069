"""Classical edits: global OpenCV edits with exact inverses, and the ``classical`` and ``copy`` generators."""
