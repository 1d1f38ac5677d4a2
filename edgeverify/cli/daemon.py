"""`edgeverify run` (the service) and `edgeverify check-config`."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run the MQTT service (what the systemd unit starts)")
    run.add_argument("--config", default=None, help="config file (default: $EDGEVERIFY_CONFIG or /etc/edgeverify/config.yaml)")
    run.set_defaults(func=run_service)
    check = sub.add_parser("check-config", help="validate the config file and print the effective settings")
    check.add_argument("--config", default=None, help="config file (default: $EDGEVERIFY_CONFIG or /etc/edgeverify/config.yaml)")
    check.add_argument("--quiet", action="store_true", help="print nothing, only set the exit code")
    check.add_argument("--example", action="store_true", help="print an example config with every key at its default")
    check.add_argument("--reference", action="store_true", help="print every key, its check and reload behaviour (Markdown)")
    check.set_defaults(func=check_config)


def run_service(args: argparse.Namespace) -> int:
    from ..daemon import run_daemon

    return run_daemon(args.config)


def check_config(args: argparse.Namespace) -> int:
    from ..store.config import load_config

    if args.example or args.reference:
        from ..store.config_doc import render_example, render_reference

        print(render_example() if args.example else render_reference(), end="")
        return 0
    config = load_config(args.config)  # ConfigError -> "edgeverify: error: ..." and exit 2
    if config.mqtt.password_file:
        config.mqtt.secret()  # readable?
    if not args.quiet:
        print(f"# {config.source}: OK")
        print(json.dumps(config.redacted(), indent=2))
    return 0
