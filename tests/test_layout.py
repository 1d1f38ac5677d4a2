"""The package layout says what the imports do; these tests check every layering rule (docs/architecture.md).

Layers, bottom up (an arrow is "may import"; every module may import its own sub-package and the leaves):

    leaves        edgeverify (the version), errors, topic_rules  -- import nothing of ours
    core          audio, VAD, features, embedder, scoring, verifier          -> leaves
    build, tools  model building, evaluation, benchmarks                     -> core
    store         config, profiles, enrollment                               -> core
    app           decision service, admin, protocol, worker, sinks, model    -> core, store
    adapters      mqtt, microphone, wyoming_stt, systemd                     -> app, core, store (never each other)
    daemon, cli   the only places that wire adapters together                -> anything (cli: daemon too)

Further rules: no import cycle between modules (lazy imports included), and no private name (`_x`)
imported from another module. Imports inside functions count like any other: a lazy import is still an
arrow. Tests: no test module imports from another test module (shared helpers live in conftest.py and
helper modules that are not tests).

Run as a script (`python tests/test_layout.py [package dir]`) to print the structure figures: the largest
modules, import cycles and cross-module private imports.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Iterable

PKG = Path(__file__).resolve().parents[1] / "edgeverify"
TESTS = Path(__file__).resolve().parent

LEAVES = {"", "errors", "topic_rules"}  # "" is the package itself (its __version__)
ADAPTERS = {"mqtt", "microphone", "wyoming_stt", "systemd"}
# what each layer may import, besides the leaves and itself
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "build": {"core"},
    "tools": {"core"},
    "store": {"core"},
    "app": {"core", "store"},
    **{a: {"app", "core", "store"} for a in ADAPTERS},
    "daemon": {"app", "core", "store"} | ADAPTERS,
    "cli": {"app", "core", "store", "build", "tools", "daemon"} | ADAPTERS,
    "__main__": {"cli"},
}
# arrows that break a rule today and are being removed by their owners (the model build work untangles
# build/ and tools/); an entry here is a known debt, not a permission: delete it once the import is gone
KNOWN_DEBT = {
    ("build/cohort_build.py", "edgeverify.tools.evaluate"),
    ("tools/bench.py", "edgeverify.build.model_build"),
    ("tools/evaluate.py", "edgeverify.store.profiles"),  # identification trials over a profile store
}
# the Wyoming daemon test borrows two stream helpers from the Wyoming unit tests (their owner moves them)
KNOWN_TEST_DEBT: set[str] = set()


def _modules(pkg: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted(pkg.rglob("*.py")):
        parts = list(path.relative_to(pkg.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(name: str, known: Iterable[str]) -> str:
    """The module a dotted import name refers to (`edgeverify.app.protocol.Response` -> the module)."""
    known = set(known)
    while name not in known and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _import_nodes(path: Path, pkg: Path) -> Iterable[tuple[str, list[str], int]]:
    """(absolute base module, imported names, line) of every edgeverify import in a file, lazy ones too."""
    here = list(path.relative_to(pkg.parent).with_suffix("").parts)
    package = here[:-1] if here[-1] != "__init__" else here[:-1]
    if here[-1] == "__init__":
        package = here[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1] if node.level > 1 else package
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] == pkg.name:
                yield mod, [a.name for a in node.names], node.lineno
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == pkg.name:
                    yield a.name, [], node.lineno


def _imports(path: Path, pkg: Path = PKG) -> set[str]:
    """Every module of ours a file imports (relative imports resolved), including lazy ones."""
    known = _modules(pkg)
    out: set[str] = set()
    for mod, names, _ in _import_nodes(path, pkg):
        if names:  # `from x import y`: y may be a module (from . import vad) or a name in x
            out.update(_resolve(f"{mod}.{n}", known) for n in names)
        else:
            out.add(_resolve(mod, known))
    return out


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_violations(pkg: Path = PKG) -> set[tuple[str, str]]:
    bad = set()
    for name, path in _modules(pkg).items():
        layer = _layer(name)
        allowed = ALLOWED.get(layer, set()) | LEAVES | {layer}
        if layer in LEAVES:
            allowed = {""} if layer else set()
        for target in _imports(path, pkg):
            if _layer(target) not in allowed:
                bad.add((str(path.relative_to(pkg)), target))
    return bad


def private_imports(pkg: Path = PKG) -> set[tuple[str, str]]:
    """(file, module.name) for each `_name` imported from another module of ours."""
    known = _modules(pkg)
    bad = set()
    for name, path in known.items():
        for mod, names, _ in _import_nodes(path, pkg):
            for n in names:
                target = _resolve(f"{mod}.{n}", known)
                if n.startswith("_") and not n.startswith("__") and target != f"{mod}.{n}" and mod != name:
                    bad.add((str(path.relative_to(pkg)), f"{mod}.{n}"))
    return bad


def import_cycles(pkg: Path = PKG) -> list[list[str]]:
    """Strongly connected module groups of the import graph (each one a cycle), largest first."""
    mods = _modules(pkg)
    graph = {m: {t for t in _imports(p, pkg) if t in mods and t != m and not m.startswith(t + ".") and t != pkg.name}
             for m, p in mods.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan; the graph has ~100 nodes, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(cycles, key=len, reverse=True)


def package_cycles(pkg: Path = PKG) -> list[tuple[str, str]]:
    """Pairs of sub-packages that import each other (the coarse view of a cycle)."""
    edges = {(_layer(m), _layer(t)) for m, p in _modules(pkg).items() for t in _imports(p, pkg)}
    edges = {(a, b) for a, b in edges if a != b and a not in LEAVES and b not in LEAVES}
    return sorted((a, b) for a, b in edges if (b, a) in edges and a < b)


def test_every_layer_imports_only_what_it_may() -> None:
    bad = layer_violations() - KNOWN_DEBT
    assert not bad, sorted(bad)


def test_adapters_never_import_each_other() -> None:
    """Stated on its own because it is the rule that keeps transports replaceable."""
    bad = {(f, t) for f, t in layer_violations() if _layer("edgeverify." + f.split("/")[0].removesuffix(".py")) in ADAPTERS
           and _layer(t) in ADAPTERS}
    assert not bad, sorted(bad)


def test_no_private_name_is_imported_across_modules() -> None:
    assert not private_imports(), sorted(private_imports())


def test_no_import_cycles() -> None:
    assert not import_cycles(), import_cycles()
    known_pairs = {("build", "tools")}  # KNOWN_DEBT's two arrows make this one; see there
    assert not set(package_cycles()) - known_pairs, package_cycles()


def test_no_test_module_imports_another() -> None:
    bad = []
    for path in TESTS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            bad += [f"{path.relative_to(TESTS)} -> {n}" for n in names
                    if n.split(".")[-1].startswith("test_") or n.split(".")[-1] == "conftest"]
    assert not set(bad) - KNOWN_TEST_DEBT, bad


def _probe(tmp_path: Path, files: dict[str, str]) -> Path:
    """A throw-away package tree (named like ours) holding `files`."""
    root = tmp_path / "edgeverify"
    for rel, text in {"__init__.py": "", "errors.py": "", **files}.items():
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    return root


def test_the_checks_can_fail(tmp_path: Path) -> None:
    """Each rule above finds a planted breach: lazy and relative imports, a private name, a cycle."""
    pkg = _probe(tmp_path, {
        "core/__init__.py": "",
        "core/audio.py": "from ..errors import X\ndef f():\n    from ..mqtt.protocol import Request\n    from . import vad\n",
        "core/vad.py": "from .audio import _hidden\n",
        "mqtt/__init__.py": "",
        "mqtt/protocol.py": "import edgeverify.microphone.listener\n",
        "microphone/__init__.py": "",
        "microphone/listener.py": "",
        "app/__init__.py": "",
        "app/a.py": "from .b import x\n",
        "app/b.py": "from . import a\n",
    })
    assert {"edgeverify.errors", "edgeverify.mqtt.protocol", "edgeverify.core.vad"} <= _imports(pkg / "core/audio.py", pkg)
    assert ("core/audio.py", "edgeverify.mqtt.protocol") in layer_violations(pkg)
    assert ("mqtt/protocol.py", "edgeverify.microphone.listener") in layer_violations(pkg)
    assert private_imports(pkg) == {("core/vad.py", "edgeverify.core.audio._hidden")}
    assert ["edgeverify.app.a", "edgeverify.app.b"] in import_cycles(pkg)
    assert ["edgeverify.core.audio", "edgeverify.core.vad"] in import_cycles(pkg)


def report(pkg: Path) -> None:
    mods = _modules(pkg)
    sizes = sorted(((len(p.read_text().splitlines()), str(p.relative_to(pkg))) for p in mods.values()), reverse=True)
    print("largest modules:", ", ".join(f"{f} {n}" for n, f in sizes[:5]))
    cycles = import_cycles(pkg)
    print(f"module import cycles: {len(cycles)}", *(" <-> ".join(c) for c in cycles), sep="\n  ")
    print("sub-package cycles:", package_cycles(pkg))
    priv = sorted(private_imports(pkg))
    print(f"cross-module private imports: {len(priv)}", *(f"{f} imports {n}" for f, n in priv), sep="\n  ")
    bad = sorted(layer_violations(pkg))
    print(f"layer rule breaches: {len(bad)}", *(f"{f} -> {t}" for f, t in bad), sep="\n  ")


if __name__ == "__main__":
    report(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else PKG)
