"""The package layout says what the imports do: the core imports no adapter, the build no runtime adapter."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "edgeverify"
ADAPTERS = ("mqtt", "microphone", "wyoming_stt", "systemd", "store", "cli", "daemon")


def _imports(path: Path) -> set[str]:
    """Every edgeverify module a file imports (relative imports resolved), including lazy ones."""
    pkg = list(path.relative_to(PKG.parent).with_suffix("").parts[:-1])
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = pkg[: len(pkg) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            names = [f"{mod}.{a.name}" for a in node.names] if not node.module else [mod]
            out.update(n for n in names if n.startswith("edgeverify"))
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("edgeverify"))
    return out


def _sub(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


@pytest.mark.parametrize("package, forbidden", [
    ("core", ADAPTERS + ("build", "tools")),
    ("build", ("mqtt", "microphone", "wyoming_stt", "systemd", "daemon", "cli")),
])
def test_package_imports_no_adapter(package: str, forbidden: tuple[str, ...]) -> None:
    bad = {f"{p.relative_to(PKG)} -> {m}" for p in (PKG / package).rglob("*.py") for m in _imports(p)
           if _sub(m) in forbidden}
    assert not bad, sorted(bad)


def test_import_scanner_sees_relative_and_lazy_imports(tmp_path: Path) -> None:
    """The check above must be able to fail: a lazy relative import of an adapter is found."""
    probe = PKG / "core" / "audio.py"
    found = _imports(probe)
    assert "edgeverify.errors" in found
    fake = PKG / "core" / "_probe_layout_test.py"
    try:
        fake.write_text("def f():\n    from ..mqtt.protocol import Request\n    from . import vad\n")
        assert {"edgeverify.mqtt.protocol", "edgeverify.core.vad"} <= _imports(fake)
    finally:
        fake.unlink()
