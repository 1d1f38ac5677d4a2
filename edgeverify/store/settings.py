"""Declaring a setting once: its default, check, reload behaviour and doc line sit on one dataclass field.

`setting(...)` and `section(...)` return dataclass fields whose metadata carries a `Setting`; everything that
reads the configuration -- the parser, the SIGHUP reload plan, `check-config`, the example config and the
generated reference -- walks those fields (`walk`) instead of keeping its own copy of names, ranges and defaults.
This module knows nothing about edgeverify's sections; `config.py` declares them.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

from ..errors import ConfigError

# How a changed value takes effect on SIGHUP.
LIVE = "live"  # applied to the running service
MODEL = "model"  # applied by loading the model (verifier) again
RESTART = "restart"  # kept at the running value until the service restarts
RELOAD_KINDS = (LIVE, MODEL, RESTART)

_META = "edgeverify.setting"
_SECTION = "edgeverify.section"


def fail(path: str, message: str, value: Any) -> ConfigError:
    """The one error shape: "<key path>: <what it must be>, got <value>" (a long value cut to one line)."""
    shown = repr(value)
    if len(shown) > 80:
        shown = f"{shown[:60]}... ({len(shown)} characters)"
    return ConfigError(f"{path}: {message}, got {shown}")


# -- checks: each turns a YAML value into the field's value or raises fail(...) ----------------------

class Check:
    """A value check; `kind` and `rule` describe it in the generated reference."""

    kind = "value"

    def __call__(self, path: str, value: Any) -> Any:
        raise NotImplementedError

    def rule(self) -> str:
        return ""


@dataclass(frozen=True)
class Int(Check):
    lo: int
    hi: int
    kind = "integer"

    def __call__(self, path: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not self.lo <= value <= self.hi:
            raise fail(path, f"must be an integer {self.lo}-{self.hi}", value)
        return value

    def rule(self) -> str:
        return f"{self.lo} .. {self.hi}"


@dataclass(frozen=True)
class Num(Check):
    lo: float
    hi: float
    kind = "number"

    def __call__(self, path: str, value: Any) -> float:
        # compared before float(): a 400-digit YAML integer would overflow it
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not self.lo <= value <= self.hi:
            raise fail(path, f"must be a number {self.lo:g}-{self.hi:g}", value)
        return float(value)

    def rule(self) -> str:
        return f"{self.lo:g} .. {self.hi:g}"


@dataclass(frozen=True)
class Bool(Check):
    kind = "boolean"

    def __call__(self, path: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise fail(path, "must be true or false", value)
        return value


@dataclass(frozen=True)
class Text(Check):
    """A non-empty string, optionally matching a pattern (`what` says what it must be, in the error)."""

    pattern: Optional[str] = None
    what: str = "a non-empty string"
    kind = "string"

    def __call__(self, path: str, value: Any) -> str:
        matches = self.pattern is None or (isinstance(value, str) and re.fullmatch(self.pattern, value) is not None)
        if not isinstance(value, str) or not value or not matches:
            raise fail(path, f"must be {self.what}", value)
        return value

    def rule(self) -> str:
        return "" if self.what == "a non-empty string" else self.what


@dataclass(frozen=True)
class Choice(Check):
    """One of `values`; `fold_case` accepts any case and stores the lower-case value."""

    values: tuple[Any, ...]
    fold_case: bool = False
    message: Optional[str] = None  # default "must be one of a, b, c"
    kind = "choice"

    def __call__(self, path: str, value: Any) -> Any:
        v = value.lower() if self.fold_case and isinstance(value, str) else value
        if isinstance(v, bool) or v not in self.values:
            raise fail(path, self.message or f"must be one of {', '.join(str(x) for x in self.values)}", value)
        return self.values[self.values.index(v)]  # the declared value (16000, not 16000.0)

    def rule(self) -> str:
        return " | ".join(str(x) for x in self.values)


@dataclass(frozen=True)
class Custom(Check):
    """A check written as a function (path, value) -> value, for rules no simple check states."""

    fn: Callable[[str, Any], Any]
    kind: str = "string"  # type: ignore[misc]
    describe: str = ""

    def __call__(self, path: str, value: Any) -> Any:
        return self.fn(path, value)

    def rule(self) -> str:
        return self.describe


# -- declarations -----------------------------------------------------------------------------------

USE_DEFAULT = object()  # the example config shows the default


@dataclass(frozen=True)
class Setting:
    doc: str
    check: Check
    reload: str
    nullable: bool = False  # YAML null is accepted and stored as None
    null_is_default: bool = False  # YAML null means "the default" (not None)
    secret: bool = False  # hidden in check-config's output
    example: Any = USE_DEFAULT  # value shown in the example config instead of the default
    commented: bool = False  # the example config shows the key commented out (the default is computed)
    shown_default: Optional[str] = None  # the reference's "default" column when the default is computed
    key: Optional[str] = None  # the YAML key when it differs from the attribute name


@dataclass(frozen=True)
class Section:
    doc: str
    cls: type


def setting(default: Any = dataclasses.MISSING, *, doc: str, check: Check, reload: str,
            default_factory: Any = dataclasses.MISSING, **options: Any) -> Any:
    """A dataclass field declaring one setting: its default, check, SIGHUP behaviour and one-line doc."""
    if reload not in RELOAD_KINDS:
        raise ValueError(f"reload must be one of {RELOAD_KINDS}")
    meta = {_META: Setting(doc=doc, check=check, reload=reload, **options)}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def section(cls: type, doc: str) -> Any:
    """A dataclass field holding a nested section (a mapping in YAML)."""
    return dataclasses.field(default_factory=cls, metadata={_SECTION: Section(doc=doc, cls=cls)})


@dataclass(frozen=True)
class Entry:
    """One declared setting as `walk` yields it: dotted YAML path, attribute path, default and declaration."""

    path: str  # "mqtt.port" (YAML keys)
    attrs: tuple[str, ...]  # ("mqtt", "port") (attribute names)
    default: Any
    setting: Setting

    def get(self, obj: Any) -> Any:
        for a in self.attrs:
            obj = getattr(obj, a)
        return obj

    def set(self, obj: Any, value: Any) -> None:
        for a in self.attrs[:-1]:
            obj = getattr(obj, a)
        setattr(obj, self.attrs[-1], value)


def key_of(f: dataclasses.Field) -> str:
    """The YAML key of a declared field."""
    s = f.metadata.get(_META)
    return (s.key if s is not None and s.key else None) or f.name


def section_of(f: dataclasses.Field) -> Optional[Section]:
    """The Section a field declares, or None for a setting (or an undeclared field)."""
    return f.metadata.get(_SECTION)


def declared_fields(cls: type) -> Iterator[dataclasses.Field]:
    return (f for f in dataclasses.fields(cls) if _META in f.metadata or _SECTION in f.metadata)


def walk(cls: type, prefix: str = "", attrs: tuple[str, ...] = ()) -> Iterator[Entry]:
    """Every setting of cls and its sections, in declaration order."""
    instance = cls()
    for f in declared_fields(cls):
        key = prefix + key_of(f)
        if _SECTION in f.metadata:
            yield from walk(f.metadata[_SECTION].cls, key + ".", attrs + (f.name,))
        else:
            yield Entry(key, attrs + (f.name,), getattr(instance, f.name), f.metadata[_META])


def sections(cls: type, prefix: str = "") -> Iterator[tuple[str, Section]]:
    """(dotted path, Section) of every nested section, in declaration order."""
    for f in declared_fields(cls):
        if _SECTION in f.metadata:
            sec = f.metadata[_SECTION]
            yield prefix + key_of(f), sec
            yield from sections(sec.cls, prefix + key_of(f) + ".")


def find(cls: type, path: str) -> Entry:
    """The declaration of one setting by its dotted YAML path (KeyError if none)."""
    for entry in walk(cls):
        if entry.path == path:
            return entry
    raise KeyError(path)


# -- parsing ----------------------------------------------------------------------------------------

def parse_section(cls: type, data: Any, path: str = "") -> Any:
    """A mapping -> an instance of cls: unknown keys are errors (usually typos), each value is checked.

    A class may define `_validate(self, path, data)` for rules that span fields (called after its own
    fields are parsed, before the enclosing section's).
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise fail(path.rstrip(".") or "config", "must be a mapping", data)
    fields = {key_of(f): f for f in declared_fields(cls)}
    for key in data:
        if key not in fields:
            raise ConfigError(f"{path}{key}: unknown key (known: {', '.join(sorted(fields))})")
    obj = cls()
    for key, f in fields.items():
        if key not in data:
            continue
        value = data[key]
        if _SECTION in f.metadata:
            setattr(obj, f.name, parse_section(f.metadata[_SECTION].cls, value, f"{path}{key}."))
            continue
        s: Setting = f.metadata[_META]
        if value is None and (s.nullable or s.null_is_default):
            if s.nullable:
                setattr(obj, f.name, None)
            continue
        setattr(obj, f.name, s.check(path + key, value))
    validate = getattr(obj, "_validate", None)
    if validate is not None:
        validate(path, data)
    return obj


def as_dict(obj: Any, hide_secrets: bool = True) -> dict[str, Any]:
    """The settings of obj as a plain dict keyed like the YAML file (secrets shown as "***" when set)."""
    out: dict[str, Any] = {}
    for f in declared_fields(type(obj)):
        value = getattr(obj, f.name)
        if _SECTION in f.metadata:
            out[key_of(f)] = as_dict(value, hide_secrets)
            continue
        if hide_secrets and f.metadata[_META].secret and value:
            value = "***"
        out[key_of(f)] = list(value) if isinstance(value, (list, tuple)) else value
    return out


# -- reload -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReloadPlan:
    """What a re-read config changes, by each setting's declared reload behaviour."""

    live: tuple[str, ...]  # changed settings applied now (dotted YAML paths)
    model: tuple[str, ...]  # changed settings applied by loading the model again
    restart: tuple[str, ...]  # changed settings that wait for a restart (the running value is kept)
    config: Any  # what to run with now: the new config with every restart-only setting at its running value

    @property
    def reload_model(self) -> bool:
        return bool(self.model)

    @property
    def changed(self) -> tuple[str, ...]:
        return self.live + self.model + self.restart


def plan_reload(old: Any, new: Any) -> ReloadPlan:
    """Compare two configs of the same class setting by setting (new is not modified)."""
    import copy

    effective = copy.deepcopy(new)
    buckets: dict[str, list[str]] = {LIVE: [], MODEL: [], RESTART: []}
    for entry in walk(type(old)):
        before, after = entry.get(old), entry.get(new)
        if before == after:
            continue
        buckets[entry.setting.reload].append(entry.path)
        if entry.setting.reload == RESTART:
            entry.set(effective, copy.deepcopy(before))
    return ReloadPlan(tuple(buckets[LIVE]), tuple(buckets[MODEL]), tuple(buckets[RESTART]), effective)
