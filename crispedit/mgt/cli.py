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


def _train(args: argparse.Namespace) -> int:
    from .config import MGTConfig, resolve_config
    from .train import train

    cfg = MGTConfig.load(resolve_config(args.config))
    if args.seed is not None:
        cfg.train.seed = args.seed
    result = train(cfg, args.data, output_dir=args.output_dir or cfg.train.output_dir, max_steps=args.max_steps,
                   resume=args.resume)
    last = result.losses[-1] if result.losses else float("nan")
    print(json.dumps({"output_dir": str(result.output_dir), "step": result.progress.step, "last_loss": last,
                      "tokens_per_second": round(result.tokens_per_second, 1)}))
    return 0


def _edit(args: argparse.Namespace) -> int:
    from PIL import Image

    from crispedit.images import ImageRejected, read_image

    from .pipeline import EditPipeline

    try:  # the same checks as a build's source: a bad file is a clear message, not a traceback
        pixels, _ = read_image(Path(args.image))
    except ImageRejected as error:
        print(f"error: {args.image}: {error}", file=sys.stderr)
        return 2
    pipe = EditPipeline.from_checkpoint(args.checkpoint, device=_device(args.device))
    image = pipe(Image.fromarray(pixels), args.instruction, steps=args.steps, guidance_scale=args.guidance,
                 seed=args.seed, tau=args.tau, keywords=args.keyword)
    image.save(args.out)
    print(args.out)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate, write_report

    report = evaluate(args.checkpoint, args.benchmark, steps=args.steps, seed=args.seed, limit=args.limit,
                      device=_device(args.device), clip_id=args.clip_model, dino_id=args.dino_model)
    if args.out:
        write_report(report, args.out)
    print(json.dumps(report["metrics"], indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `train`, `edit` and `eval` to an existing argparse subparsers object."""
    p = subparsers.add_parser("train", help="train the bundled EditMGT editor on crispedit shards")
    p.add_argument("data", nargs="+", metavar="DATA", help="dataset dirs (OUT with data/*.parquet) or .parquet files")
    p.add_argument("--config", required=True, help="YAML config path or bundled name (tiny, small, full)")
    p.add_argument("--output-dir", default=None)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --output-dir")
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(func=_train)

    p = subparsers.add_parser("edit", help="edit one image with a trained EditMGT checkpoint")
    p.add_argument("--checkpoint", required=True, help="checkpoint dir or training output dir")
    p.add_argument("--image", required=True)
    p.add_argument("--instruction", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tau", type=float, default=None, help="region-hold threshold; 0 disables")
    p.add_argument("--keyword", action="append", default=None, help="instruction word(s) that locate the edit")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.set_defaults(func=_edit)

    p = subparsers.add_parser("eval", help="L1, CLIP-I, DINO, CLIP-T of a checkpoint on a benchmark Parquet")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--benchmark", required=True, help="Parquet with source, instruction and target columns")
    p.add_argument("--out", default=None, help="write the per-row report as JSON")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--clip-model", default="openai/clip-vit-large-patch14", help="CLIP id or path for CLIP-I and CLIP-T")
    p.add_argument("--dino-model", default="facebook/dinov2-base", help="DINOv2 id or path for DINO")
    p.set_defaults(func=_eval)


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (`python -m crispedit.mgt.cli`): the trainer's commands without the dataset ones."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(prog="crispedit-mgt")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
