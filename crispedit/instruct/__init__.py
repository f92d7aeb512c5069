"""Instruction synthesis: the ``instruct`` stage, edit specifications, prompts and taxonomies (docs/instruct.md)."""
