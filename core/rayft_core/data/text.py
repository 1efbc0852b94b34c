"""What counts as text: a str that encodes as UTF-8. JSON can spell a lone surrogate (half of a UTF-16 pair,
"\\ud800"), which Python decodes into a str that is not text; tokenizers and Arrow refuse it."""

from __future__ import annotations

from typing import Any


def surrogate_path(value: Any) -> list | None:
    """The keys and indices leading to the first string (or key) in ``value`` that does not encode as
    UTF-8, None when all do."""
    if isinstance(value, str):
        return None if is_text(value) else []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(key, str) and not is_text(key):
            return [key]
        inner = surrogate_path(item)
        if inner is not None:
            return [key, *inner]
    return None


def is_text(text: str) -> bool:
    if text.isascii():  # most strings: no encoding needed to tell
        return True
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False
