"""Speaker profiles: `edgeverify enroll|profiles|forget|identify`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .verify import add_model_choice

_CONFIG_HELP = "config file for state_dir/model/threshold (default: $EDGEVERIFY_CONFIG or /etc/edgeverify/config.yaml; optional)"


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", default=None, help="directory holding profiles/ (default: the config's state_dir)")
    parser.add_argument("--config", default=None, help=_CONFIG_HELP)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("enroll", help="create a speaker profile from 1+ clips (3 recommended)")
    p.add_argument("name", help="profile name: 1-64 characters of A-Z a-z 0-9 _ . -")
    p.add_argument("clips", nargs="+", metavar="CLIP", help="WAV/FLAC recordings of the speaker, a few seconds of speech each")
    p.add_argument("--replace", action="store_true", help="overwrite an existing profile of that name")
    p.add_argument("--min-consistency", type=float, default=None, help="refuse a clip whose cosine to the others is below this (default 0.2)")
    add_model_choice(p, "the config's model")
    add_config_arguments(p)
    p.set_defaults(func=enroll)

    p = sub.add_parser("profiles", help="list enrolled speaker profiles")
    p.add_argument("--json", action="store_true", help="print a JSON array")
    add_config_arguments(p)
    p.set_defaults(func=list_profiles)

    p = sub.add_parser("forget", help="delete a speaker profile")
    p.add_argument("name", help="profile name")
    add_config_arguments(p)
    p.set_defaults(func=forget)

    p = sub.add_parser("identify", help="which enrolled speaker is this clip? (best profile and score, or unknown)")
    p.add_argument("clip", help="WAV/FLAC clip")
    p.add_argument("--threshold", type=float, default=None, help="raw cosine threshold to name a speaker (0.1 behaviour)")
    p.add_argument("--target-far", type=float, default=None, metavar="F",
                   help="operating point: false-accept rate F per profile on the calibration trials (default: EER point)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_model_choice(p, "the config's model")
    add_config_arguments(p)
    p.set_defaults(func=identify)


def open_config_and_store(args: argparse.Namespace) -> tuple[Any, Any]:
    """The config (optional file) and the profile store that --config/--state-dir name."""
    from ..store.config import load_config
    from ..store.profiles import ProfileStore

    config = load_config(args.config, missing_ok=True)
    floor = getattr(args, "min_consistency", None)
    store = ProfileStore(args.state_dir or config.state_dir, floor)  # None: the model's own floor
    return config, store


def enroll(args: argparse.Namespace) -> int:
    from ..store.enrollment import enroll as enroll_clips
    from ..store.profiles import check_name

    from ..app.model import load_verifier

    check_name(args.name)
    config, store = open_config_and_store(args)
    verifier = load_verifier(config, store=store, model=args.model, precision=args.precision)
    report = enroll_clips(verifier, store, args.name, args.clips, replace=args.replace)
    for clip in report.clips:
        print(clip.line())
    if report.error is not None:
        raise report.error  # one line on stderr, exit 2 (same as any other error)
    assert report.profile is not None
    done = "replaced" if report.replaced is not None else "enrolled"
    print(f"{done} {report.profile.name} from {report.profile.clips} clip(s) with {report.profile.model.label} "
          f"in {store.path(report.profile.name)}")
    for note in report.notes:
        print(f"note: {note}")
    print("a running daemon picks it up on the next request")
    return 0


def list_profiles(args: argparse.Namespace) -> int:
    """Each profile with the model it was enrolled with, and whether the configured model scores it
    (`model: auto` resolved as the daemon resolves it; a model given as a file path is not opened here)."""
    from ..app.model import choose_model

    config, store = open_config_and_store(args)
    profiles = store.list()
    running = choose_model(config.model_name, store).model
    if running in ("int8", "fp32"):  # before `precision:` existed: ECAPA at that precision
        running = "ecapa"
    known = running in ("ecapa", "campp")

    def scored(p: Any) -> Any:
        return p.model.name == running if known else None

    if args.json:
        print(json.dumps([{"name": p.name, "clips": p.clips, "created": p.created, "model": p.model.to_dict(),
                           "scored": scored(p)} for p in profiles]))
    elif not profiles:
        print(f"no profiles in {store.dir}")
    else:
        for p in profiles:
            note = "" if scored(p) is not False else f"\tnot scored by {running}: re-enroll"
            print(f"{p.name}\t{p.clips} clip(s)\t{p.created}\t{p.model.label}{note}")
    return 0


def forget(args: argparse.Namespace) -> int:
    _, store = open_config_and_store(args)
    store.forget(args.name)  # UnknownProfileError -> exit 2
    print(f"forgot {args.name}")
    return 0


def identify(args: argparse.Namespace) -> int:
    from ..app.model import load_verifier
    from ..core.audio import read_audio

    config, store = open_config_and_store(args)
    verifier = load_verifier(config, args.threshold, getattr(args, "target_far", None), store=store,
                             model=args.model, precision=args.precision)
    test = verifier.prepare(read_audio(args.clip))
    sides = store.sides(verifier.scorer, verifier.model)
    best, d, scores = verifier.identify(test, sides)
    skipped = sorted(verifier.other_model(sides))
    if args.json:
        print(json.dumps({
            "speaker": best,
            **(d.fields() if d is not None else {"score": None, "threshold": verifier.threshold}),
            "same_speaker": best is not None,
            "scores": {k: round(v, 6) for k, v in sorted(scores.items(), key=lambda kv: -kv[1])},
            "file": args.clip,
            "model": verifier.model.name,
            **({"skipped_profiles": {"count": len(skipped), "reason": "enrolled with another model: re-enroll"}}
               if skipped else {}),
        }))
        return 0
    if skipped:
        print(f"note: {len(skipped)} profile(s) enrolled with another model not scored by {verifier.model.name} "
              f"(re-enroll them): {', '.join(skipped)}")
    if d is None:
        print("unknown (no profiles enrolled)" if not skipped else f"unknown (no profiles of {verifier.model.name})")
    else:
        value = f"score {d.score:.4f}" if d.llr is None else f"llr {d.llr:.3f} (cosine {d.score:.4f})"
        relation = ">=" if best is not None else "<"
        print(f"{best or 'unknown'}: {value} {relation} threshold {d.threshold:.4f} ({d.operating_point})")
    return 0
