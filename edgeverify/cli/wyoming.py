"""`edgeverify wyoming`: the Wyoming speech-to-text proxy with speaker identification, without MQTT.

The daemon (`edgeverify run` with `wyoming.enabled: true`) runs the same proxy next to MQTT and
publishes each decision there; this command prints each decision as one JSON line instead.
"""

from __future__ import annotations

import argparse
import json
import sys

from .profiles import add_config_arguments, open_config_and_store
from .verify import add_model_choice


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "wyoming",
        help="Wyoming speech-to-text proxy that identifies the speaker (Home Assistant Assist); prints decisions",
    )
    p.add_argument("--uri", default=None, help="where Home Assistant connects (default: the config's wyoming.uri, tcp://127.0.0.1:10310; clients admitted: wyoming.allow)")
    p.add_argument("--stt-uri", default=None, help="the real speech-to-text service (default: wyoming.stt_uri, tcp://127.0.0.1:10300)")
    p.add_argument("--reject-unknown", action="store_true", default=None, help="unknown speaker: return an empty transcript")
    p.add_argument("--tag", default=None, metavar="FORMAT", help='tag the transcript, e.g. "{speaker}: {text}" ("off" disables)')
    p.add_argument("--threshold", type=float, default=None, help="minimum score to name a speaker (default: the model's)")
    add_model_choice(p, "the config's model")
    add_config_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio
    import dataclasses
    import logging

    from ..store.config import tag_format, wyoming_uri
    from ..app.decisions import DecisionService
    from ..app.model import load_verifier, report_profiles
    from ..wyoming_stt.proxy import SpeakerIdProxy, serve

    config, store = open_config_and_store(args)
    w = config.wyoming
    if args.uri is not None:
        w.uri = wyoming_uri("--uri", args.uri)
    if args.stt_uri is not None:
        w.stt_uri = wyoming_uri("--stt-uri", args.stt_uri)
    if args.reject_unknown:
        w.reject_unknown = True
    if args.tag is not None:
        w.tag_transcript = tag_format("--tag", args.tag)
    verifier = load_verifier(config, args.threshold, warm_up=True, store=store, model=args.model,
                             precision=args.precision)
    problem = report_profiles(store, verifier.model).problem
    if problem:
        print(f"edgeverify wyoming: {problem}", file=sys.stderr, flush=True)
    service = DecisionService(verifier, store, config.limits.max_audio_seconds)

    def print_decision(body: dict, source: str) -> None:
        print(json.dumps(body, ensure_ascii=False), flush=True)

    proxy = SpeakerIdProxy(service, w, print_decision, device_id=config.device_id)
    if not getattr(args, "debug", False):
        logging.getLogger().setLevel(logging.INFO)  # a foreground service: say what it does
    print(
        f"edgeverify wyoming: {len(store.list())} profile(s); listening on {w.uri}, speech-to-text {w.stt_uri}; "
        f"settings {json.dumps(dataclasses.asdict(w))}",
        file=sys.stderr,
        flush=True,
    )
    try:
        asyncio.run(serve(proxy, w.uri))
    except OSError as exc:
        from ..errors import WyomingError

        raise WyomingError(f"cannot listen on {w.uri}: {exc}") from None
    return 0
