"""Derived pairs: data that compounds. Inverse pairs, composites of chain turns, and multi-turn chains.

``pairs`` and ``chain`` are the library (no model, no stage); ``wording`` writes the
instructions derived pairs need; ``stages`` holds the ``inverse``, ``compose`` and
``multi_turn`` stage kinds. docs/derived.md describes them.
"""
