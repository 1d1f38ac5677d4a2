"""config.example.yaml and docs/configuration.md, rendered from the declarations in config.py.

    python -m edgeverify.store.config_doc --write   # regenerate both files in the source tree
    python -m edgeverify.store.config_doc --check   # exit 1 if either is stale (tests/test_config.py does this too)
    edgeverify check-config --example | --reference # the same text on an installed device
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterator

from .config import Config
from .settings import LIVE, MODEL, RESTART, USE_DEFAULT, Entry, declared_fields, key_of, section_of, sections, walk

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_PATH = REPO / "config.example.yaml"
REFERENCE_PATH = REPO / "docs" / "configuration.md"
WIDTH = 118
COMMENT_COLUMN = 28  # inline comments start in this column unless the line is longer

_RELOAD_WORDS = {
    LIVE: "live",
    MODEL: "reloads model",
    RESTART: "restart",
}

EXAMPLE_HEADER = """\
# edgeverify daemon configuration (copy to /etc/edgeverify/config.yaml; check with `edgeverify check-config`).
# Unknown keys and bad values stop the service at start-up with a message naming the key.
# Every key, its allowed values and what a reload (SIGHUP) does with it: docs/configuration.md.
# (Generated from edgeverify/store/config.py: python -m edgeverify.store.config_doc --write)
"""


def _yaml(value: Any) -> str:
    """One value as YAML flow text (what a user would type)."""
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, allow_unicode=True).strip()
    return text[: -len("...")].strip() if text.endswith("...") else text


def _example_value(entry: Entry) -> Any:
    s = entry.setting
    return entry.default if s.example is USE_DEFAULT else s.example


def _comment_lines(text: str, indent: str, width: int = WIDTH) -> list[str]:
    return [f"{indent}# {line}" for line in textwrap.wrap(" ".join(text.split()), width - len(indent) - 2)]


def _example_lines(cls: type, indent: str, prefix: str) -> Iterator[str]:
    entries = {e.path: e for e in walk(cls, prefix)}
    for f in declared_fields(cls):
        section = section_of(f)
        if section is not None:
            yield ""
            yield from _comment_lines(section.doc, indent)
            yield f"{indent}{f.name}:"
            yield from _example_lines(section.cls, indent + "  ", f"{prefix}{f.name}.")
            continue
        entry = entries[prefix + key_of(f)]
        key = entry.path.rsplit(".", 1)[-1]
        line = f"{indent}{'# ' if entry.setting.commented else ''}{key}: {_yaml(_example_value(entry))}"
        column = max(COMMENT_COLUMN, len(line) + 2)
        doc = textwrap.wrap(" ".join(entry.setting.doc.split()), max(40, WIDTH - column - 2))
        yield f"{line.ljust(column)}# {doc[0]}"
        yield from (f"{' ' * column}# {more}" for more in doc[1:])


def render_example() -> str:
    """config.example.yaml: every setting at its default (or example value), with its doc line."""
    return EXAMPLE_HEADER + "\n" + "\n".join(_example_lines(Config, "", "")) + "\n"


def _cell(text: str) -> str:
    text = " ".join(str(text).split())
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def _default_text(entry: Entry) -> str:
    if entry.setting.shown_default is not None:
        return entry.setting.shown_default
    return f"`{_yaml(entry.default)}`"


def render_reference() -> str:
    """docs/configuration.md: one table row per setting."""
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated from edgeverify/store/config.py by `python -m edgeverify.store.config_doc --write`;"
        " edit the declarations there, not this file. -->",
        "",
        "The service reads `/etc/edgeverify/config.yaml` (or the file named by `--config` or `$EDGEVERIFY_CONFIG`).",
        "Unknown keys and bad values stop it at start-up with one line naming the key, e.g.",
        "`mqtt.port: must be an integer 1-65535, got 'abc'`; `edgeverify check-config` runs the same checks and",
        "prints the effective settings (secrets hidden). `config.example.yaml` lists every key at its default.",
        "",
        "**On reload** (`systemctl reload edgeverify`, i.e. SIGHUP) says what happens to a changed value:",
        "",
        "- *live*: applied to the running service;",
        "- *reloads model*: the speaker model is loaded again with the new value (the old one keeps answering",
        "  if that fails);",
        "- *restart*: logged and kept at the running value until the service restarts.",
        "",
        "A key written as `a.b` is `b:` inside the `a:` mapping.",
    ]
    groups: dict[str, list[Entry]] = {}
    for entry in walk(Config):
        groups.setdefault(entry.path.rsplit(".", 1)[0] if "." in entry.path else "", []).append(entry)
    section_docs = {"": Config.__doc__ or "", **{path: sec.doc for path, sec in sections(Config)}}
    for name, entries in groups.items():
        out += ["", f"## {'Top level' if not name else '`' + name + '`'}", ""]
        out += [_cell(section_docs.get(name, "")), ""]
        out += ["| Key | Type | Allowed | Default | On reload | Meaning |", "|---|---|---|---|---|---|"]
        for e in entries:
            check = e.setting.check
            kind = check.kind + (" or null" if e.setting.nullable else "")
            out.append(f"| `{e.path}` | {_cell(kind)} | {_cell(check.rule())} | {_cell(_default_text(e))} | "
                       f"{_RELOAD_WORDS[e.setting.reload]} | {_cell(e.setting.doc)} |")
    return "\n".join(out) + "\n"


def stale() -> list[str]:
    """The generated files that differ from what the declarations render (paths relative to the repo)."""
    bad = []
    for path, text in ((EXAMPLE_PATH, render_example()), (REFERENCE_PATH, render_reference())):
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            bad.append(str(path.relative_to(REPO)))
    return bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgeverify.store.config_doc", description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="regenerate config.example.yaml and docs/configuration.md")
    mode.add_argument("--check", action="store_true", help="exit 1 if either file is stale")
    mode.add_argument("--example", action="store_true", help="print the example config")
    mode.add_argument("--reference", action="store_true", help="print the configuration reference (Markdown)")
    args = parser.parse_args(argv)
    if args.example:
        sys.stdout.write(render_example())
    elif args.reference:
        sys.stdout.write(render_reference())
    elif args.write:
        REFERENCE_PATH.parent.mkdir(exist_ok=True)
        EXAMPLE_PATH.write_text(render_example(), encoding="utf-8")
        REFERENCE_PATH.write_text(render_reference(), encoding="utf-8")
    else:
        bad = stale()
        if bad:
            print(f"stale: {', '.join(bad)} (run python -m edgeverify.store.config_doc --write)", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
