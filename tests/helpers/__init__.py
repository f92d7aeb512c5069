"""What several test packages share: the repository's paths, recipe writers, the local servers (LLM, Hub, S3),
the stage cases of the contract battery and the stages it builds with."""
