"""`crispedit eval`: edit every row of a benchmark, score it, write per-sample metrics and a summary.

The checkpoint edits each row's source (with the row's task when the model has task vectors
and knows it). Source and target are cut with the same centre window the editor uses, so the
metrics (metrics.py) compare aligned pixels. Output, in `out_dir`:

    samples.parquet   one row per sample: id, task, instruction, every metric (null where the
                      benchmark lacks its inputs), optional MLLM scores, optional edited PNG
    summary.json      means over all samples and per task, with the counts behind them

With an LLM endpoint, each edit is also judged GEdit-style (mllm_score.py).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from .bench_formats import benchmark_files, detect_layout, iter_rows
from .data import crop_pair, decode_rgb
from .metrics import EVAL_CLIP_ID, EVAL_DINO_ID, MetricModels, edit_metrics
from .pipeline import EditPipeline

log = logging.getLogger(__name__)

METRICS = ("l1", "clip_i", "dino", "l1_source", "clip_i_source", "dino_source", "clip_t", "clip_dir")
MLLM_METRICS = ("mllm_semantics", "mllm_quality", "mllm_overall")


@dataclass
class EvalReport:
    checkpoint: str
    benchmark: str
    layout: str
    n: int
    summary: dict[str, dict[str, Any]] = field(default_factory=dict)  # "all" and each task -> metric -> mean
    samples_path: Path | None = None
    summary_path: Path | None = None


def _png(image: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def summarize(rows: list[dict[str, Any]], metrics: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Mean of each metric over the rows where it is defined, for all rows and per task."""
    groups: dict[str, list[dict[str, Any]]] = {"all": rows}
    for row in rows:
        if row.get("task"):
            groups.setdefault(f"task:{row['task']}", []).append(row)
    out: dict[str, dict[str, Any]] = {}
    for name, members in groups.items():
        stats: dict[str, Any] = {"n": len(members)}
        for m in metrics:
            values = [r[m] for r in members if r.get(m) is not None and not math.isnan(r[m])]
            if values:
                stats[m] = sum(values) / len(values)
        out[name] = stats
    return out


def evaluate(checkpoint: str | Path, benchmark: str | Path, out_dir: str | Path, *, fmt: str = "auto",
             columns: dict[str, str] | None = None, split: str | None = None, steps: int | None = None, seed: int = 0,
             limit: int | None = None, device: str = "cpu", clip_id: str = EVAL_CLIP_ID, dino_id: str = EVAL_DINO_ID,
             overrides: list[str] | None = None, save_images: bool = False, llm_settings: Any = None,
             mllm_batch: int = 8, scorer_seed: int = 0) -> EvalReport:
    """Edit every row of ``benchmark`` with ``checkpoint`` and score it (see the module docstring).

    ``scorer_seed`` seeds the tiny CLIP/DINOv2 twins of a tiny checkpoint, as a recipe's seed
    seeds a ``--tiny`` build's: the same seed gives the same scores for the same pair.
    """
    files = benchmark_files(benchmark, split)
    layout = detect_layout(pq.ParquetFile(files[0]).schema_arrow.names, fmt, columns)
    log.info("benchmark %s: %s layout, %d file(s), columns %s", benchmark, layout.name, len(files), layout.columns)
    pipe = EditPipeline.from_checkpoint(checkpoint, device=device, overrides=overrides)
    models = MetricModels(tiny=pipe.cfg.is_tiny, seed=scorer_seed, device=device, clip_id=clip_id, dino_id=dino_id)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scorer = None
    if llm_settings is not None:
        from .mllm_score import MLLMScorer

        scorer = MLLMScorer(llm_settings, out_dir / ".llm-cache")
    resolution = pipe.cfg.model.resolution
    rows: list[dict[str, Any]] = []
    pending: list[tuple[dict[str, Any], Image.Image, Image.Image, str]] = []

    def flush() -> None:
        if scorer is not None and pending:
            for (row, *_), scores in zip(pending, scorer.score([(s, e, i) for _, s, e, i in pending])):
                row.update(scores)
        pending.clear()

    for i, item in enumerate(iter_rows(files, layout, limit)):
        source_px = decode_rgb(item["source"])
        target_px = decode_rgb(item["target"]) if item.get("target") is not None else None
        src_t, tgt_t, _ = crop_pair(source_px, target_px if target_px is not None else source_px, resolution, None)
        source = Image.fromarray(src_t.permute(1, 2, 0).numpy())
        target = Image.fromarray(tgt_t.permute(1, 2, 0).numpy()) if target_px is not None else None
        task = item.get("task") or None
        known = task if task in pipe.tasks else None
        instruction = str(item["instruction"] or "")
        edited = pipe(source_px, instruction, steps=steps, seed=seed + i, task=known)
        row: dict[str, Any] = {"id": item["id"], "task": task, "instruction": instruction, "task_used": known}
        row.update(edit_metrics(models, edited, source, target, item.get("input_caption"), item.get("output_caption")))
        if save_images:
            row["edited_image"] = _png(edited)
        rows.append(row)
        if scorer is not None:
            pending.append((row, source, edited, instruction))
            if len(pending) >= mllm_batch:
                flush()
    flush()
    metrics = METRICS + (MLLM_METRICS if scorer is not None else ())
    report = EvalReport(str(checkpoint), str(benchmark), layout.name, len(rows), summarize(rows, metrics))
    report.samples_path = out_dir / "samples.parquet"
    pq.write_table(_samples_table(rows, metrics, save_images, scorer is not None), report.samples_path)
    report.summary_path = out_dir / "summary.json"
    report.summary_path.write_text(json.dumps({"checkpoint": report.checkpoint, "benchmark": report.benchmark,
                                               "layout": report.layout, "n": report.n, "summary": report.summary},
                                              indent=2))
    return report


def _samples_table(rows: list[dict[str, Any]], metrics: tuple[str, ...], images: bool, mllm: bool) -> pa.Table:
    """Explicit types, so an all-null metric column (no targets, say) is still float64."""
    fields = [pa.field("id", pa.string()), pa.field("task", pa.string()), pa.field("instruction", pa.string()),
              pa.field("task_used", pa.string())]
    fields += [pa.field(m, pa.float64()) for m in metrics]
    if mllm:
        fields.append(pa.field("mllm_error", pa.string()))
    if images:
        fields.append(pa.field("edited_image", pa.binary()))
    schema = pa.schema(fields)
    return pa.Table.from_pylist([{f.name: r.get(f.name) for f in schema} for r in rows], schema=schema)


def print_summary(report: EvalReport) -> None:
    """The summary as a rich table: one row per group (all, then each task), one column per metric."""
    from rich.console import Console
    from rich.table import Table

    present = [m for m in METRICS + MLLM_METRICS if any(m in g for g in report.summary.values())]
    table = Table(title=f"{report.layout} benchmark: {report.n} samples")
    table.add_column("group")
    table.add_column("n", justify="right")
    for m in present:
        table.add_column(m, justify="right")
    for name, stats in report.summary.items():
        table.add_row(name, str(stats["n"]), *[f"{stats[m]:.4f}" if m in stats else "-" for m in present])
    Console().print(table)
