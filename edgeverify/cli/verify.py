"""`edgeverify verify A B`: are two clips the same speaker?"""

from __future__ import annotations

import argparse
import json
import socket
import time
import uuid
from datetime import datetime, timezone

from ..vad import DEFAULT_VAD_MODE, VAD_MODES


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by every command that loads the model."""
    parser.add_argument("--model", default="int8", help="int8 (default), fp32, or a path to an .onnx model")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    parser.add_argument(
        "--vad",
        choices=VAD_MODES,
        default=DEFAULT_VAD_MODE,
        help="check: refuse clips with < 1 s of speech, embed the whole clip (default); "
        "trim: also cut long pauses out before embedding; off: no VAD",
    )


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("verify", help="decide whether two WAV/FLAC clips are the same speaker")
    parser.add_argument("first", help="first clip (WAV or FLAC, any rate, mono or multi-channel)")
    parser.add_argument("second", help="second clip")
    parser.add_argument("--threshold", type=float, default=None, help="cosine threshold (default: the model's calibrated one)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a sentence")
    parser.add_argument("--analyzer-id", default=None, help="id of this analyser in the output (default: host name)")
    parser.add_argument("--analysis-id", default=None, help="id of this analysis in the output (default: a new UUID)")
    add_model_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..audio import read_audio
    from ..verifier import Verifier

    started = time.perf_counter()
    verifier = Verifier.load(args.model, threads=args.threads, threshold=args.threshold, vad_mode=args.vad)
    first, second = read_audio(args.first), read_audio(args.second)
    decision = verifier.verify(first, second)
    result = {
        "same_speaker": decision.same_speaker,
        "score": round(decision.score, 6),
        "threshold": decision.threshold,
        "first_file": args.first,
        "second_file": args.second,
        "analyzer_id": args.analyzer_id or socket.gethostname(),
        "analysis_id": args.analysis_id or str(uuid.uuid4()),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "model": verifier.model_name,
        "elapsed_ms": round(1000 * (time.perf_counter() - started), 1),
    }
    if args.json:
        print(json.dumps(result))
    else:
        verdict = "same speaker" if decision.same_speaker else "different speakers"
        relation = ">=" if decision.same_speaker else "<"
        print(f"{verdict}: score {decision.score:.4f} {relation} threshold {decision.threshold:.4f}")
    return 0
