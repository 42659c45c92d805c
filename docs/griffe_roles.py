"""Griffe extension: turn Sphinx roles in numpydoc docstrings into Markdown.

The library's docstrings use ``:func:`name``` style roles (numpydoc convention).
mkdocstrings renders docstrings as Markdown, where those roles would show up
verbatim. This extension rewrites every role before rendering:

* a target that resolves to a public, documented object of ``r2vcal`` or
  ``pipelines`` becomes an autorefs cross-reference (``[`name`][full.path]``),
  so a renamed or removed object fails ``mkdocs build --strict``;
* anything else (numpy, matplotlib, private helpers) becomes a code span.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(
    r":(?:py:)?(?P<role>func|class|meth|data|attr|mod|obj|exc|const|ref|term)"
    r":`(?P<target>[^`]+)`"
)
_ROOTS = ("r2vcal", "pipelines")


def _lookup(loader: griffe.GriffeLoader, path: str) -> Any:
    try:
        return loader.modules_collection.get_member(path)
    except Exception:
        return None


def _final(obj: Any) -> Any:
    while isinstance(obj, griffe.Alias):
        try:
            obj = obj.final_target
        except Exception:
            return None
    return obj


def _documented(obj: Any) -> bool:
    """Public all the way down from a public module of r2vcal/pipelines."""
    if obj is None or not obj.path.startswith(_ROOTS):
        return False
    if any(part.startswith("_") for part in obj.path.split(".")):
        return False
    node = obj
    while node.parent is not None:
        parent = node.parent
        if parent.is_module and parent.exports is not None:
            if node.name not in parent.exports:
                return False
        node = parent
    return True


def _scopes(obj: Any) -> list[Any]:
    scopes = []
    node = obj
    while node is not None:
        if node.is_class or node.is_module:
            scopes.append(node)
        node = node.parent
    return scopes


def _resolve(loader: griffe.GriffeLoader, obj: Any, target: str) -> str | None:
    candidates = []
    for scope in _scopes(obj):
        candidates.append(f"{scope.path}.{target}")
    candidates.append(target)
    for path in candidates:
        found = _final(_lookup(loader, path))
        if _documented(found):
            return found.path
    return None


class SphinxRolesToMarkdown(griffe.Extension):
    """Rewrite ``:role:`target``` in every docstring of the loaded package."""

    def on_package(
        self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any
    ) -> None:
        self._walk(pkg, loader, set())

    def _walk(self, obj: Any, loader: griffe.GriffeLoader, seen: set[str]) -> None:
        if obj.path in seen:
            return
        seen.add(obj.path)
        if obj.docstring is not None:
            obj.docstring.value = self._rewrite(obj, loader, obj.docstring.value)
        for member in obj.members.values():
            if not isinstance(member, griffe.Alias):
                self._walk(member, loader, seen)

    def _rewrite(self, obj: Any, loader: griffe.GriffeLoader, text: str) -> str:
        def repl(match: re.Match[str]) -> str:
            raw = match.group("target").strip()
            if "<" in raw and raw.endswith(">"):  # `title <target>`
                raw = raw[raw.index("<") + 1 : -1]
            short = raw.startswith("~")
            target = raw.lstrip("~").rstrip("()")
            label = target.rsplit(".", 1)[-1] if short else target
            path = _resolve(loader, obj, target)
            if path is None:
                return f"`{label}`"
            return f"[`{label}`][{path}]"

        return _ROLE.sub(repl, text)
