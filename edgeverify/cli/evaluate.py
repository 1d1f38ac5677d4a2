"""`edgeverify eval`: EER / minDCF of a model on a trial list."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .verify import add_model_arguments


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("eval", help="EER and minDCF on a VoxCeleb-style trial list")
    parser.add_argument("--root", type=Path, required=True, help="folder the trial paths are relative to")
    parser.add_argument("--trials", type=Path, default=None, help="trial list '<0|1> a.wav b.wav' (default ROOT/trials.txt)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--plot", type=Path, default=None, help="write a DET curve to this PNG (needs matplotlib)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    add_model_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluate import evaluate
    from ..verifier import Verifier

    verifier = Verifier.load(args.model, threads=args.threads, vad_mode=args.vad)
    trials = args.trials or args.root / "trials.txt"

    def progress(done: int, total: int) -> None:
        if not args.quiet and (done == total or done % 50 == 0):
            print(f"embedded {done}/{total} files", file=sys.stderr, flush=True)

    result, scores, labels = evaluate(verifier, args.root, trials, progress)
    if args.plot:
        from ..metrics import plot_det

        plot_det(args.plot, {f"{result.model} (EER {result.eer_percent:.2f} %)": (scores, labels)})
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        print(
            f"EER {result.eer_percent:.3f} %  minDCF(0.01) {result.min_dcf:.4f}  threshold at EER {result.threshold:.4f}\n"
            f"{result.n_trials} trials ({result.n_target} target), {result.n_files} files, "
            f"{result.n_refused_files} refused, model {result.model}, VAD {result.vad}"
        )
        for name, reason in sorted(result.refused.items()):
            print(f"  refused {name}: {reason}")
    return 0
