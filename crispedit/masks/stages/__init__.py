"""The mask stages: ``ground`` (GroundingDINO + SAM), ``mask_filter`` and ``pixel_threshold``."""
