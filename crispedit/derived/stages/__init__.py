"""The ``inverse``, ``compose`` and ``multi_turn`` stage kinds (registered by crispedit.recipe.catalog)."""
