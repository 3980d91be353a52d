"""YAML that cannot explode: the one loader for configs a user hands in (API body, CLI file, recipes).

``yaml.safe_load`` builds no objects, but it still expands aliases (a 539-byte "billion laughs" config
became a 6.9 MB stored config), recurses once per nesting level (5,000 nested brackets end in a
``RecursionError``) and turns the escape ``"\\0"`` into a NUL character that PostgreSQL cannot store.
:func:`load` refuses all three, and text over :data:`MAX_BYTES`, with a :class:`YamlRefused` whose
message names the problem and, where it can, the line.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.composer import Composer
from yaml.events import AliasEvent

MAX_BYTES = 256 * 1024  # a study's config is a few KB; the largest recipe is under 4 KB
MAX_DEPTH = 32  # the deepest real config nests 4 levels (benchmark.variants[i].others[j])


class YamlRefused(ValueError):
    """The text is not YAML this product accepts; the message says why."""


def find_nul(value: Any, loc: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
    """The location of the first string (or mapping key) in parsed JSON/YAML that contains ``\\x00``."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(value, loc)]
    while stack:  # iterative: a deeply nested value must not hit the recursion limit
        item, where = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return where
        elif isinstance(item, dict):
            for key, sub in reversed(list(item.items())):
                if isinstance(key, str) and "\x00" in key:
                    return (*where, key)
                stack.append((sub, (*where, key)))
        elif isinstance(item, list):
            stack.extend((sub, (*where, i)) for i, sub in reversed(list(enumerate(item))))
    return None


class _GuardedLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases and caps nesting while the document is composed (before any of it
    is built, so neither the expansion nor the recursion ever happens)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:  # type: ignore[override]
        if self.check_event(AliasEvent):
            mark = self.peek_event().start_mark
            raise YamlRefused(
                f"line {mark.line + 1}: aliases (*name) are not accepted; write the value out where it is used"
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise YamlRefused(f"line {mark.line + 1}: nested more than {MAX_DEPTH} levels deep")
            return Composer.compose_node(self, parent, index)
        finally:
            self._depth -= 1


def load(text: str | bytes, *, what: str = "config") -> Any:
    """Parse ``text`` as YAML, refusing oversized text, aliases, deep nesting and NUL characters.

    Raises :class:`YamlRefused` for those and for text that is not YAML at all.
    """
    size = len(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
    if size > MAX_BYTES:
        raise YamlRefused(f"{what} is {size:,} bytes; at most {MAX_BYTES:,} are accepted")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise YamlRefused(f"{what} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if "\x00" in text:
        raise YamlRefused(f"{what} must not contain NUL characters (\\x00)")
    loader = _GuardedLoader(text)
    try:
        data = loader.get_single_data()
    except RecursionError:  # belt and braces: the depth cap above fires long before this
        raise YamlRefused(f"{what} is nested too deeply") from None
    except yaml.YAMLError as exc:
        raise YamlRefused(f"{what} is not valid YAML ({exc})") from None
    finally:
        loader.dispose()
    where = find_nul(data)
    if where is not None:  # the escapes "\0", "\x00" and "\u0000" decode to NUL after the raw check
        path = ".".join(str(p).replace("\x00", "\\x00") for p in where) or "the document"
        raise YamlRefused(f"{path}: must not contain NUL characters (\\x00)")
    return data
