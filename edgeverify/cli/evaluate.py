"""`edgeverify eval`: EER / minDCF of a model on a trial list."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .verify import add_decision_arguments, add_model_arguments, load_verifier


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("eval", help="EER and minDCF on a VoxCeleb-style trial list")
    parser.add_argument("--root", type=Path, required=True, help="folder the trial paths are relative to")
    parser.add_argument("--trials", type=Path, default=None, help="trial list '<0|1> a.wav b.wav' (default ROOT/trials.txt)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--plot", type=Path, default=None, help="write a DET curve to this PNG (needs matplotlib)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument("--identify", action="store_true",
                        help="open-set identification on ROOT/<speaker>/*.wav instead of a trial list")
    parser.add_argument("--enroll-clips", type=int, default=3, help="--identify: clips per enrolled profile (default 3)")
    parser.add_argument("--max-enrolled", type=int, default=0, help="--identify: at most this many profiles (0: all)")
    add_model_arguments(parser)
    add_decision_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..tools.evaluate import evaluate

    verifier = load_verifier(args)
    trials = args.trials or args.root / "trials.txt"

    def progress(done: int, total: int) -> None:
        if not args.quiet and (done == total or done % 50 == 0):
            print(f"embedded {done}/{total} files", file=sys.stderr, flush=True)

    if args.identify:
        from ..tools.evaluate import evaluate_identification

        r = evaluate_identification(verifier, args.root, args.enroll_clips, args.max_enrolled, progress)
        if args.json:
            print(json.dumps(r.as_dict()))
        else:
            print(f"{r.n_enrolled} profiles from {r.enroll_clips} clips each; {r.n_known_tests} known and "
                  f"{r.n_stranger_tests} stranger test clips ({r.score_mode} at {r.operating_point})\n"
                  f"correct identification {r.correct_id_percent:.2f} %  named wrong person {r.wrong_id_percent:.2f} %  "
                  f"false alarm (stranger named) {r.false_alarm_percent:.2f} %")
        return 0

    result, scores, labels = evaluate(verifier, args.root, trials, progress)
    if args.plot:
        from ..core.metrics import plot_det

        plot_det(args.plot, {f"{result.model} (EER {result.eer_percent:.2f} %)": (scores, labels)})
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        print(
            f"EER {result.eer_percent:.3f} %  minDCF(0.01) {result.min_dcf:.4f}  threshold at EER {result.threshold:.4f}  "
            f"({result.score_mode} scores)\n"
            f"decisions at {result.operating_point}: FAR {result.far_percent:.2f} %  FRR {result.frr_percent:.2f} %  "
            f"Cllr {result.cllr if result.cllr is not None else '-'}  min Cllr {result.min_cllr:.4f}\n"
            f"{result.n_trials} trials ({result.n_target} target), {result.n_files} files, "
            f"{result.n_refused_files} refused, model {result.model}, VAD {result.vad}"
        )
        for name, reason in sorted(result.refused.items()):
            print(f"  refused {name}: {reason}")
    return 0
