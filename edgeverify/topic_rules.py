"""MQTT topic-name rules: validity (MQTT v5 UTF-8 and topic rules) and filter matching; pure functions.

A topic the broker considers malformed makes it drop the connection, and paho re-sends the same publish
after every reconnect -- so every string the daemon publishes to (Response Topic, reply_to, config) is
checked with these first. A leaf module (like errors.py): the config parser and the MQTT adapter both use
it, so neither has to import the other.
"""

from __future__ import annotations

import re
from typing import Optional

MAX_TOPIC_BYTES = 65535  # a UTF-8 string in MQTT is length-prefixed with 16 bits

# MQTT v5 §1.5.4: no U+0000, no lone surrogates (not representable in UTF-8); control characters
# U+0001-U+001F, U+007F-U+009F and non-characters are refused by brokers (mosquitto) as well.
_NONCHARS = "".join(f"\\U{p:04x}fffe\\U{p:04x}ffff" for p in range(0x11))
_BAD_CHARS = re.compile(f"[\\x00-\\x1f\\x7f-\\x9f\\ud800-\\udfff\\ufdd0-\\ufdef{_NONCHARS}]")


def string_problem(s: object, max_bytes: int = MAX_TOPIC_BYTES) -> Optional[str]:
    """Why `s` is not a valid MQTT UTF-8 string (None when it is)."""
    if not isinstance(s, str):
        return f"not a string ({type(s).__name__})"
    m = _BAD_CHARS.search(s)
    if m is not None:
        return f"character U+{ord(m.group()):04X} at position {m.start()} is not allowed in MQTT"
    if len(s) > max_bytes // 4 and len(s.encode("utf-8")) > max_bytes:
        return f"longer than {max_bytes} bytes"
    return None


def topic_problem(topic: object) -> Optional[str]:
    """Why `topic` cannot be published to (None when it can): empty, bad UTF-8 rules, wildcards."""
    problem = string_problem(topic)
    if problem is not None:
        return problem
    assert isinstance(topic, str)
    if not topic:
        return "empty topic"
    if "+" in topic or "#" in topic:
        return "wildcards + and # are not allowed in a topic name"
    return None


def filter_problem(pattern: object) -> Optional[str]:
    """Why `pattern` is not a valid topic filter (None when it is)."""
    problem = string_problem(pattern)
    if problem is not None:
        return problem
    assert isinstance(pattern, str)
    if not pattern:
        return "empty filter"
    levels = pattern.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return "'#' must be a whole last level"
        if "+" in level and level != "+":
            return "'+' must be a whole level"
    return None


def matches(pattern: str, topic: str) -> bool:
    """MQTT filter matching, including the rule that wildcards at the first level skip `$` topics."""
    if topic.startswith("$") and pattern[:1] in ("+", "#"):
        return False
    p, t = pattern.split("/"), topic.split("/")
    for i, level in enumerate(p):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(p) == len(t)
