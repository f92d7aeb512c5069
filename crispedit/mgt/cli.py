"""`crispedit train | edit | eval`: the EditMGT trainer's subcommands.

Only argparse is imported here; torch, diffusers and transformers load inside the
handlers so that `crispedit --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

# Task inversion learns one vector: a short run at a higher rate than full training.
INVERSION_STEPS = 200
INVERSION_LEARNING_RATE = 1e-3


def _train(args: argparse.Namespace) -> int:
    from .config import MGTConfig, apply_overrides, resolve_config
    from .train import TaskInversion, inversion_config, train

    invert = None
    if args.invert_task:
        if not args.from_checkpoint:
            print("error: --invert-task needs --from CKPT (the model to add the task to)", file=sys.stderr)
            return 2
        from .checkpoint import resolve_checkpoint
        from .released import is_released_layout

        base = Path(args.from_checkpoint)
        base = base if is_released_layout(base) else resolve_checkpoint(base)
        invert = TaskInversion(args.invert_task, base)
        cfg = inversion_config(base, args.invert_task)
        cfg.train.max_steps = INVERSION_STEPS
        cfg.train.learning_rate = INVERSION_LEARNING_RATE
        cfg.train.lr_scheduler, cfg.train.lr_warmup_steps = "constant", 0
    elif args.config:
        cfg = MGTConfig.load(resolve_config(args.config))
    else:
        print("error: train needs --config (or --invert-task NAME --from CKPT)", file=sys.stderr)
        return 2
    if args.set:
        cfg = apply_overrides(cfg, args.set)
    if args.seed is not None:
        cfg.train.seed = args.seed
    if args.learning_rate is not None:
        cfg.train.learning_rate = args.learning_rate
    if args.num_workers is not None:
        cfg.train.num_workers = args.num_workers
    output_dir = args.output_dir or cfg.train.output_dir
    reads = [*args.data, *([args.from_checkpoint] if args.from_checkpoint else [])]
    if not _claim_folder(output_dir, "train", reads, overwrite=args.overwrite, resume=args.resume):
        return 2
    show = sys.stderr.isatty() and not args.no_progress
    result = train(cfg, args.data, output_dir=output_dir, max_steps=args.max_steps,
                   resume=args.resume, invert=invert, show_progress=show)
    last = result.losses[-1] if result.losses else float("nan")
    summary = {"output_dir": str(result.output_dir), "step": result.progress.step, "epoch": result.progress.epoch,
               "last_loss": last, "tokens_per_second": round(result.tokens_per_second, 1)}
    if invert is not None:
        summary["task"] = invert.name
        summary["first_loss"] = result.losses[0] if result.losses else float("nan")
    print(json.dumps(summary))
    return 0


#: What a training run's folder holds (its crispedit marker names these), and an evaluation's.
TRAIN_PATTERNS = ("config.yaml", "checkpoints/*", ".tmp-*", "*events.out.tfevents.*")
EVAL_PATTERNS = ("samples.parquet", "summary.json", "images/*", ".llm-cache/*")


def _claim_folder(folder: str | Path, kind: str, reads: list[str], *, overwrite: bool, resume: bool = False) -> bool:
    """Claim an output folder (crispedit.core.outputs): refuse a user's folder or one the run reads; an earlier run
    of the same kind is continued with ``resume`` or replaced, its own files only, with ``overwrite``."""
    from crispedit.core.outputs import OutputRefused, claim, marker_for, remove_owned, write_marker

    patterns = TRAIN_PATTERNS if kind == "train" else EVAL_PATTERNS
    try:
        target = claim(folder, kind, reads=reads, legacy=lambda where: _legacy(where, kind, patterns))
        if target.previous is not None and not resume:
            if not overwrite:
                more = "--resume to continue it, or " if kind == "train" else ""
                raise OutputRefused(f"{folder} holds an earlier crispedit {kind}; pass {more}--overwrite to replace it")
            target.check_replace(True)
            remove_owned(target.location, target.previous)
        write_marker(target.url, marker_for(kind, patterns=patterns))
    except (OutputRefused, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return False
    return True


def _legacy(where, kind: str, patterns: tuple[str, ...]) -> dict | None:  # noqa: ANN001 - a crispedit.core.locations.Location
    """A run written before markers existed: a training folder has config.yaml and checkpoints/, an evaluation summary.json and samples.parquet."""
    from crispedit.core.outputs import marker_for

    path = where.path
    if path is None:
        return None
    found = (path / "config.yaml").is_file() and (path / "checkpoints").is_dir() if kind == "train" else (
        (path / "summary.json").is_file() and (path / "samples.parquet").is_file())
    return marker_for(kind, patterns=patterns) if found else None


def _llm(args: argparse.Namespace):  # noqa: ANN202 - crispedit.models.llm.LLMSettings, imported lazily
    if not args.llm_base_url:
        return None
    if not args.llm_model:
        raise SystemExit("error: --llm-base-url needs --llm-model")
    from .llm_tasks import llm_settings

    return llm_settings(args.llm_base_url, args.llm_model, args.llm_api_key_env)


def _edit(args: argparse.Namespace) -> int:
    from PIL import Image

    from crispedit.core.images import ImageRejected, read_image

    from .pipeline import EditPipeline

    try:  # the same checks as a build's source: a bad file is a clear message, not a traceback
        pixels, _ = read_image(Path(args.image))
    except ImageRejected as error:
        print(f"error: {args.image}: {error}", file=sys.stderr)
        return 2
    pipe = EditPipeline.from_checkpoint(args.checkpoint, device=_device(args.device), overrides=args.set)
    task = args.task
    if task is not None and task not in pipe.tasks:
        known = ", ".join(pipe.tasks) or "none: it was trained without task embeddings"
        print(f"error: --task {task!r} is not a task of this model ({known})", file=sys.stderr)
        return 2
    settings = _llm(args)
    if task is None and pipe.tasks and settings is not None:
        from .llm_tasks import predict_tasks

        task, error = predict_tasks([args.instruction], pipe.tasks, settings, Path(args.out).parent / ".llm-cache")[0]
        print(f"task: {task}" if task else f"task: not predicted ({error}); editing without one", file=sys.stderr)
    image = pipe(Image.fromarray(pixels), args.instruction, steps=args.steps, guidance_scale=args.guidance,
                 seed=args.seed, tau=args.tau, keywords=args.keyword, task=task)
    image.save(args.out)
    print(args.out)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .bench_formats import parse_columns
    from .evaluate import evaluate, print_summary

    if not _claim_folder(args.out_dir, "eval", [args.checkpoint, args.benchmark], overwrite=args.overwrite):
        return 2

    report = evaluate(args.checkpoint, args.benchmark, args.out_dir, fmt=args.format, columns=parse_columns(args.columns),
                      split=args.split, steps=args.steps, seed=args.seed, limit=args.limit, device=_device(args.device),
                      clip_id=args.clip_model, dino_id=args.dino_model, overrides=args.set, save_images=args.save_images,
                      llm_settings=_llm(args), scorer_seed=args.scorer_seed)
    print_summary(report)
    print(json.dumps({"samples": str(report.samples_path), "summary": str(report.summary_path), "n": report.n,
                      "metrics": report.summary.get("all", {})}))
    return 0


def _llm_flags(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--llm-base-url", default=None, help=f"OpenAI-compatible endpoint for {what}")
    p.add_argument("--llm-model", default=None)
    p.add_argument("--llm-api-key-env", default=None, help="NAME of the environment variable holding the key (default: the LLM client's; none: no key)")


def _set_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", default=None, metavar="KEY=VALUE",
                   help="override a config value, e.g. --set sample.steps=16 (repeatable)")


def _located(command):  # noqa: ANN001, ANN202 - a subcommand handler
    """A bad config or --set is a located one-line-per-problem error and exit 2, never a traceback."""

    def run(args: argparse.Namespace) -> int:
        from .config import ConfigError

        try:
            return command(args)
        except ConfigError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2

    return run


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `train`, `edit` and `eval` to an existing argparse subparsers object."""
    p = subparsers.add_parser("train", help="train the bundled EditMGT editor on crispedit shards")
    p.add_argument("data", nargs="+", metavar="DATA", help="dataset dirs (OUT with data/*.parquet) or .parquet files")
    p.add_argument("--config", default=None, help="YAML config path or bundled name (tiny, small, full)")
    p.add_argument("--output-dir", default=None)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --output-dir")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--learning-rate", type=float, default=None)
    p.add_argument("--num-workers", type=int, default=None, help="loader worker processes (must divide loader_streams)")
    p.add_argument("--invert-task", default=None, metavar="NAME",
                   help="learn one new task vector NAME from DATA, everything else frozen (needs --from)")
    p.add_argument("--from", dest="from_checkpoint", default=None, metavar="CKPT",
                   help="checkpoint, output dir or released EditMGT dir to invert a task on")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it shows only on a terminal anyway)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in --output-dir (its own files only)")
    _set_flag(p)
    p.set_defaults(func=_located(_train))

    p = subparsers.add_parser("edit", help="edit one image with a trained EditMGT checkpoint")
    p.add_argument("--checkpoint", required=True, help="checkpoint dir, training output dir or released EditMGT dir")
    p.add_argument("--image", required=True)
    p.add_argument("--instruction", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--task", default=None, help="task category (models trained with task embeddings)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale; <= 1 turns it off")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tau", type=float, default=None, help="region-hold threshold; 0 disables")
    p.add_argument("--keyword", action="append", default=None, help="instruction word(s) that locate the edit")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    _llm_flags(p, "predicting the task when --task is not given")
    _set_flag(p)
    p.set_defaults(func=_located(_edit))

    p = subparsers.add_parser("eval", help="edit a benchmark and score it (L1, CLIP-I, DINO, CLIP-T, CLIP-dir)")
    p.add_argument("--checkpoint", required=True, help="checkpoint dir, training output dir or released EditMGT dir")
    p.add_argument("--benchmark", required=True,
                   help="Parquet file or dir: crispedit shards, Emu Edit test set, MagicBrush, or --columns")
    p.add_argument("--format", default="auto", choices=["auto", "crispedit", "emu_edit", "magicbrush"])
    p.add_argument("--columns", default=None, metavar="ROLE=COL,...",
                   help="map columns: source, target, instruction, task, input_caption, output_caption, id")
    p.add_argument("--split", default=None, help="only files whose name starts with this (e.g. test)")
    p.add_argument("--out-dir", default="eval-out", help="writes samples.parquet and summary.json here (a new or empty folder)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation in --out-dir")
    p.add_argument("--save-images", action="store_true", help="store each edited PNG in samples.parquet")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--clip-model", default="openai/clip-vit-large-patch14", help="CLIP id or path for CLIP-I and CLIP-T")
    p.add_argument("--dino-model", default="facebook/dinov2-base", help="DINOv2 id or path for DINO")
    p.add_argument("--scorer-seed", type=int, default=0,
                   help="seed of the tiny CLIP/DINOv2 twins of a tiny checkpoint (a --tiny build's recipe seed scores alike)")
    _llm_flags(p, "GEdit-style MLLM scores")
    _set_flag(p)
    p.set_defaults(func=_located(_eval))


def _device(name: str) -> str:
    from crispedit.models.devices import resolve_device

    return str(resolve_device(name))


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (`python -m crispedit.mgt.cli`): the trainer's commands without the dataset ones."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(prog="crispedit-mgt")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
