"""`edgeverify model build|info`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..core.model_store import DEFAULT_MODEL, MODELS, PRECISIONS

MODEL_NAMES = tuple(MODELS)


def register(sub: argparse._SubParsersAction) -> None:
    model = sub.add_parser("model", help="build or inspect the ONNX models")
    actions = model.add_subparsers(dest="model_command", metavar="ACTION")
    actions.required = True

    build = actions.add_parser("build", help="checkpoints -> fp32 and int8 ONNX models of CAM++ and ECAPA (no torch needed)")
    build.add_argument("--out", type=Path, default=None, help="output folder (default: the checkout's models/)")
    build.add_argument("--model", choices=[*MODEL_NAMES, "all"], default="all",
                       help="which model to build (default: all)")
    build.add_argument(
        "--checkpoint", type=Path, default=None,
        help="with --model: a local checkpoint file or a folder holding it (default: download the pinned PyPI wheel)",
    )
    build.add_argument(
        "--calibration-audio", type=Path, default=None,
        help="folder of WAV/FLAC speech to calibrate int8 ranges on (default: the shipped ranges)",
    )
    build.add_argument("--force", action="store_true", help="rebuild even if both models exist")
    build.set_defaults(func=_build)

    cal = actions.add_parser(
        "calibrate",
        help="build the scoring cohort + calibration (models/cohort-<model>.json) from the shared dev speakers",
    )
    cal.add_argument("--speech-dir", type=Path, default=Path("../shared/data/speech"),
                     help="shared speech folder holding dev/ (default ../shared/data/speech)")
    cal.add_argument("--model", default=DEFAULT_MODEL,
                     help=f"{', '.join(MODEL_NAMES)} (default {DEFAULT_MODEL}), or a path to an .onnx file")
    cal.add_argument("--precision", choices=PRECISIONS, default=None, help="int8 (default) or fp32")
    cal.add_argument("--out", type=Path, default=None,
                     help="output file (default: cohort-<model>-<precision>.json next to the model)")
    cal.add_argument("--report", action="store_true",
                     help="also print speaker-disjoint figures on dev, dev8k and native8k (embeds those sets too)")
    cal.add_argument("--degraded", type=Path, default=None,
                     help="with --report: also the conditions written by `python -m edgeverify.tools.degrade --out DIR`")
    cal.add_argument("--quiet", action="store_true", help="no progress on stderr")
    cal.set_defaults(func=_calibrate)

    info = actions.add_parser("info", help="print a model's metadata")
    info.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                      help=f"{', '.join(MODEL_NAMES)} (default {DEFAULT_MODEL}), campp-fp32 style, or a path to an .onnx file")
    info.add_argument("--precision", choices=PRECISIONS, default=None, help="int8 (default) or fp32")
    info.set_defaults(func=_info)


def _build(args: argparse.Namespace) -> int:
    from ..build.model_build import build_models
    from ..core.model_store import REPO_MODELS

    models = MODEL_NAMES if args.model == "all" else (args.model,)
    paths = build_models(args.out or REPO_MODELS, args.checkpoint, args.calibration_audio, args.force, models)
    for variant, path in paths.items():
        print(f"{variant}\t{path}")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    import sys

    from ..build.cohort_build import build

    def progress(label: str, done: int, total: int) -> None:
        if not args.quiet and (done == total or done % 100 == 0):
            print(f"{label}: embedded {done}/{total}", file=sys.stderr, flush=True)

    path, figures = build(args.speech_dir, args.model, args.out, args.report, progress, args.degraded, args.precision)
    print(json.dumps({"cohort": str(path), "heldout": figures}, indent=1))
    return 0


def _info(args: argparse.Namespace) -> int:
    from ..core.embedder import Embedder
    from ..core.model_store import resolve_model

    path = resolve_model(args.model, args.precision)
    embedder = Embedder(path)
    print(json.dumps({"path": str(path), "bytes": path.stat().st_size, **embedder.metadata}, indent=2))
    return 0
