"""Command line: `edgeverify <command>`; each command lives in edgeverify/cli/<module>.py."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Optional, Sequence

from . import __version__
from .errors import EdgeVerifyError

# Modules under edgeverify.cli, each exposing register(subparsers); imported lazily in their handlers.
COMMAND_MODULES = ("verify", "evaluate", "bench", "model", "profiles", "daemon", "wyoming")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeverify",
        description="On-device speaker verification: ECAPA-TDNN (int8 ONNX), MQTT, systemd.",
    )
    parser.add_argument("--version", action="version", version=f"edgeverify {__version__}")
    parser.add_argument("--debug", action="store_true", help="log at DEBUG level to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"edgeverify.cli.{name}").register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except EdgeVerifyError as exc:
        print(f"edgeverify: error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
