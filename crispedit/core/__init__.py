"""The ground floor: the sample record, the stage contract, the shard store and storage.

Nothing here imports a capability, the recipe or the engine, and importing this package
registers nothing (the built-in kinds are listed in ``crispedit.recipe.catalog``).
"""
