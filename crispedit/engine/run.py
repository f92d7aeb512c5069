"""Running one stage over samples: batches, one-by-one retries, and the breaker.

The same code runs in-process and inside Ray tasks and actors (crispedit.engine.segment).
"""

from __future__ import annotations

import logging
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator

from crispedit.core.failures import Breaker, StageBroken, TransientError, describe_error, is_out_of_memory
from crispedit.core.sample import Sample
from crispedit.core.stage import Stage

log = logging.getLogger("crispedit")


def apply_stage(
    stage: Stage | Callable[[list[Sample]], list[Sample]],
    name: str,
    samples: list[Sample],
    batch_size: int,
    breaker: Breaker = Breaker(),
) -> list[Sample]:
    """Run ``stage`` over the samples it accepts, in batches; return the new list of samples.

    Samples the stage does not accept pass through in place. If a batch raises, its
    samples are retried one by one (from untouched copies), and only a sample that fails
    alone becomes a reject. Each output is charged its share of the batch's seconds.
    """
    accepts = stage.accepts if isinstance(stage, Stage) else (lambda s: s.alive)
    whole = isinstance(stage, Stage) and stage.whole_families
    chosen = [i for i, s in enumerate(samples) if accepts(s)]
    results: dict[int, list[Sample]] = {}
    failures: Counter[str] = Counter()
    first_trace: dict[str, str] = {}
    for chunk in _chunks(chosen, samples, max(1, batch_size), whole):
        batch = [samples[i] for i in chunk]
        start = time.perf_counter()
        try:
            outputs = _checked_call(stage, name, batch)
        except TransientError:
            raise
        except Exception as error:
            if is_out_of_memory(error):
                raise TransientError(f"out of memory in stage {name!r}: {describe_error(error)}") from error
            if len(batch) > 1:
                log.warning("stage %s: a batch of %d failed (%s); retrying its samples one by one", name, len(batch), describe_error(error))
            outputs = []
            for sample in batch:
                try:
                    outputs.append(_checked_call(stage, name, [sample])[0])
                except TransientError:
                    raise
                except Exception as single:
                    if is_out_of_memory(single):
                        raise TransientError(f"out of memory in stage {name!r}: {describe_error(single)}") from single
                    kind = type(single).__name__
                    failures[kind] += 1
                    first_trace.setdefault(kind, "".join(traceback.format_exception(single, chain=False)))
                    refused = sample.clone()
                    refused.fail(name, describe_error(single))
                    outputs.append([refused])
        share = (time.perf_counter() - start) / max(1, sum(len(o) for o in outputs))
        for i, original, produced in zip(chunk, batch, outputs, strict=True):
            results[i] = _account(name, original, produced, share)
    if failures:
        kind, count = failures.most_common(1)[0]
        if breaker.tripped(count, len(chosen)):
            raise StageBroken(
                name,
                f"stage {name!r} raised {kind} on {count} of {len(chosen)} samples: a bug or a broken setup, not bad samples",
                first_trace[kind],
            )
    out: list[Sample] = []
    for i, sample in enumerate(samples):
        out.extend(results.get(i, [sample]))
    return out


def _chunks(chosen: list[int], samples: list[Sample], size: int, whole: bool) -> Iterator[list[int]]:
    """Batches of ``size`` samples; with ``whole``, never split the samples of one source item."""
    chunk: list[int] = []
    for position, i in enumerate(chosen):
        chunk.append(i)
        if len(chunk) >= size:
            following = chosen[position + 1] if position + 1 < len(chosen) else None
            if not whole or following is None or samples[following].index != samples[i].index:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def _account(name: str, original: Sample, produced: list[Sample], share: float) -> list[Sample]:
    """Charge the stage to its outputs: the parent's history and counters go to its first output."""
    was_alive = original.alive
    for k, sample in enumerate(produced):
        if sample is not original and sample.parent_id == original.id:  # a child
            if k == 0:
                sample.trace = list(original.trace)
                merged = {s: dict(c) for s, c in original.usage.items()}
                for s, c in sample.usage.items():
                    for key, value in c.items():
                        merged.setdefault(s, {})[key] = merged.get(s, {}).get(key, 0) + value
                sample.usage = merged
        if was_alive:
            sample.trace.append((name, share, k == 0))
    return produced


def _checked_call(stage: Callable[[list[Sample]], list[Sample]], name: str, batch: list[Sample]) -> list[list[Sample]]:
    """Call the stage on copies and group its outputs by input: itself, its children, or itself then its children.

    Copies keep a failed batch from leaving half-made changes on the samples retried alone.
    """
    copies = [s.clone() for s in batch]
    out = stage(copies)
    grouped: list[list[Sample]] = []
    given = {s.id for s in batch}  # a pair and the inverse derived from it may both be inputs: each output is its own
    position = 0
    for original in batch:
        group: list[Sample] = []
        while position < len(out) and (out[position].id == original.id
                                       or (out[position].parent_id == original.id and out[position].id not in given)):
            group.append(out[position])
            position += 1
        if not group:
            raise RuntimeError(f"stage {name!r} returned nothing for sample {original.id}; reject it with a reason instead")
        if any(s.id == original.id for s in group[1:]):  # itself first, then what it derived (an inverse pair)
            raise RuntimeError(f"stage {name!r} returned sample {original.id} after its children (or twice); return it first")
        ids = [s.id for s in group]
        if len(set(ids)) != len(ids):
            raise RuntimeError(f"stage {name!r} returned two children with the same id (reuse of a position)")
        grouped.append(group)
    if position != len(out):
        raise RuntimeError(f"stage {name!r} must return its input samples (or their children) in order")
    return grouped
