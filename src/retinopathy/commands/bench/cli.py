"""`retinopathy bench [options]`: parse the options, run, print the table, optionally write JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from retinopathy.commands.bench.results import SECTIONS
from retinopathy.core.config import PRECISIONS, SWITCHES
from retinopathy.core.contract import COURSE_IMAGE_SIZE
from retinopathy.core.errors import RetinopathyError
from retinopathy.core.files import check_output_file, json_with, rescue_text, write_json_atomic
from retinopathy.core.registry import MODELS, OWN_MODELS


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _workers(text: str) -> int | str:
    if text == "auto":
        return text
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be `auto` or a count >= 0, got {text}")
    return value


def _models(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in OWN_MODELS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(OWN_MODELS)} "
            "(the architectures written in this project)"
        )
    return names


def main(argv: list[str] | None = None) -> int:
    """CLI ``retinopathy bench [options]``; prints the table, optionally writes JSON."""
    parser = argparse.ArgumentParser(
        prog="retinopathy bench",
        description="Measure input-pipeline and training throughput on generated 512x512 JPEGs: "
        "ours against the lab's loader, torchvision's ResNets and a plain fp32 loop. "
        "Each comparison alternates its two sides in one process.",
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="Where to run (default: auto, CUDA when there is one).",
    )
    parser.add_argument(
        "--images", type=_positive_int, default=64, help="The number of generated JPEGs (default: 64)."
    )
    parser.add_argument(
        "--source-size",
        type=_positive_int,
        default=COURSE_IMAGE_SIZE,
        help="The side of the generated JPEGs (default: 512, the course's).",
    )
    parser.add_argument(
        "--batch", type=_positive_int, help="The training batch for (b)/(c) (default: 8 on CPU, 64 on CUDA)."
    )
    parser.add_argument(
        "--size",
        type=_positive_int,
        help="The training image size for (b)/(c) (default: 128 on CPU, 512 on CUDA).",
    )
    parser.add_argument(
        "--seconds",
        type=_positive_float,
        help="The time per side of each comparison (default: 12 on CPU, 10 on CUDA).",
    )
    parser.add_argument(
        "--rounds", type=_positive_int, default=6, help="Alternating rounds per comparison (default: 6)."
    )
    parser.add_argument(
        "--workers",
        type=_workers,
        default="auto",
        help="DataLoader workers for the extra input row; 0 skips the row (default: "
        "auto, the engine's choice).",
    )
    parser.add_argument(
        "--models",
        type=_models,
        default=OWN_MODELS,
        help="Models for (b), comma-separated (default: resnet18,resnet50).",
    )
    parser.add_argument(
        "--fastpath-model", choices=MODELS, default="resnet18", help="The model for (c) (default: resnet18)."
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="Fast-path precision for (c) (default: auto, bf16 on CUDA, fp32 on CPU).",
    )
    parser.add_argument(
        "--channels-last",
        choices=SWITCHES,
        default="auto",
        help="Fast-path memory format for (c) (default: auto, on for CUDA, off on CPU).",
    )
    parser.add_argument(
        "--threads", type=_positive_int, help="Torch intra-op threads (default: torch's, one per core)."
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        help="Run only this section; repeatable (default: every section).",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="Also write the figures to this JSON file.")
    args = parser.parse_args(argv)
    if args.json:  # before minutes of measuring: a file of that name that is not ours is not replaced
        check_output_file(args.json, "bench", json_with("machine", "settings", "comparisons"))
    # torch and the measuring code: imported after parsing, so that --help is instant
    from retinopathy.commands.bench.output import format_result
    from retinopathy.commands.bench.runner import Settings, run

    settings = Settings(
        device=args.device,
        images=args.images,
        source_size=args.source_size,
        batch=args.batch,
        size=args.size,
        seconds=args.seconds,
        rounds=args.rounds,
        workers=args.workers,
        models=args.models,
        fastpath_model=args.fastpath_model,
        precision=args.precision,
        channels_last=args.channels_last,
        threads=args.threads,
        sections=tuple(s for s in SECTIONS if s in (args.only or SECTIONS)),
    )
    result = run(settings, log=lambda text: print(f"bench: {text}", file=sys.stderr, flush=True))
    print(format_result(result))
    if args.json:
        try:
            write_json_atomic(args.json, result.to_dict())
        except RetinopathyError as error:
            raise rescue_text(
                args.json, json.dumps(result.to_dict(), indent=2) + "\n", "figures", error
            ) from None
        print(f"\nwrote {args.json}")
    return 0
