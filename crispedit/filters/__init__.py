"""Filter kinds, one module per kind: each scores a batch, then decides per sample from the scores alone
(crispedit.core.stage.FilterStage), so every score is kept and ``refilter`` can re-decide (docs/filters.md)."""
