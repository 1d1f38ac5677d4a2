"""`edgeverify verify A B`: are two clips the same speaker?"""

from __future__ import annotations

import argparse
import json
import socket
import time
import uuid
from datetime import datetime, timezone
from typing import Union

from ..core.scoring import DEFAULT_SCORE_MODE, SCORE_MODES
from ..core.vad import DEFAULT_VAD_MODE, VAD_MODES


def _threads(text: str) -> Union[int, str]:
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be auto or a positive integer, not {text!r}")
    return int(text)


MODEL_HELP = ("speaker model: auto (the model the profiles were enrolled with when they all agree, else the default), "
              "ecapa, campp, or a path to an .onnx file; int8 / fp32 alone mean ecapa at that precision")


def add_model_choice(parser: argparse.ArgumentParser, default_help: str = "auto") -> None:
    """--model and --precision: every command that embeds (verify, eval, enroll, identify, wyoming)."""
    parser.add_argument("--model", default=None, help=f"{MODEL_HELP} (default: {default_help})")
    parser.add_argument("--precision", choices=("int8", "fp32"), default=None,
                        help="int8 (fastest, the default) or fp32, for a model given by name")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by the commands that load the model without a config (verify, eval)."""
    add_model_choice(parser)
    parser.add_argument("--threads", type=_threads, default="auto",
                        help="onnxruntime intra-op threads, or auto: half the usable CPUs, 1-4 (default auto)")
    parser.add_argument(
        "--vad",
        choices=VAD_MODES,
        default=DEFAULT_VAD_MODE,
        help="check: refuse clips with < 1 s of speech, embed the whole clip (default); "
        "trim: also cut long pauses out before embedding; off: no VAD",
    )


def add_decision_arguments(parser: argparse.ArgumentParser) -> None:
    """How a trial is scored and decided: the same flags (and defaults) for verify, identify and eval."""
    parser.add_argument(
        "--score", choices=SCORE_MODES, default=DEFAULT_SCORE_MODE,
        help="calibrated: cohort-centred cosine -> calibrated llr (default); cosine: raw cosine as in 0.1",
    )
    parser.add_argument(
        "--target-far", type=float, default=None, metavar="F",
        help="operating point: accept at the llr whose false-accept rate on the calibration trials is F "
        "(e.g. 0.01); default: the EER point",
    )
    parser.add_argument("--threshold", type=float, default=None,
                        help="raw cosine threshold instead of an operating point (0.1 behaviour)")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("verify", help="decide whether two WAV/FLAC clips are the same speaker")
    parser.add_argument("first", help="first clip (WAV or FLAC, any rate, mono or multi-channel)")
    parser.add_argument("second", help="second clip")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a sentence")
    parser.add_argument("--analyzer-id", default=None, help="id of this analyser in the output (default: host name)")
    parser.add_argument("--analysis-id", default=None, help="id of this analysis in the output (default: a new UUID)")
    add_model_arguments(parser)
    add_decision_arguments(parser)
    parser.set_defaults(func=run)


def load_verifier(args: argparse.Namespace):  # -> Verifier (lazy import keeps --help fast)
    """The verifier that --model/--precision/--threads/--vad/--score/--target-far/--threshold describe
    (no profiles here: --model auto is the default model)."""
    from ..errors import ConfigError
    from ..app.model import build_verifier

    if args.threshold is not None and args.target_far is not None:
        raise ConfigError("give either --threshold or --target-far, not both")
    return build_verifier(args.model or "auto", args.precision, threads=args.threads, threshold=args.threshold,
                          target_far=args.target_far, vad_mode=args.vad, score_mode=args.score)


def run(args: argparse.Namespace) -> int:
    from ..core.audio import read_audio

    started = time.perf_counter()
    verifier = load_verifier(args)
    first, second = read_audio(args.first), read_audio(args.second)
    decision = verifier.verify(first, second)
    result = {
        **decision.fields(),
        "first_file": args.first,
        "second_file": args.second,
        "analyzer_id": args.analyzer_id or socket.gethostname(),
        "analysis_id": args.analysis_id or str(uuid.uuid4()),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "model": verifier.model.name,
        "precision": verifier.model.precision,
        "elapsed_ms": round(1000 * (time.perf_counter() - started), 1),
    }
    if args.json:
        print(json.dumps(result))
    else:
        verdict = "same speaker" if decision.same_speaker else "different speakers"
        relation = ">=" if decision.same_speaker else "<"
        if decision.llr is None:
            print(f"{verdict}: score {decision.score:.4f} {relation} threshold {decision.threshold:.4f}")
        else:
            print(f"{verdict}: llr {decision.llr:.3f} {relation} {decision.threshold:.3f} ({decision.operating_point}); "
                  f"cosine {decision.score:.4f}")
    return 0
