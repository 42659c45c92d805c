"""Command lines derived from the pipelines' config dataclasses (package-internal).

Every pipeline step is a config dataclass plus ``main(cfg)``; its
``make_parser()`` calls :func:`config_parser`, which reads the dataclass the
way TRL's ``HfArgumentParser`` does:

* field ``n_seeds`` becomes ``--n-seeds``; its type comes from the annotation
  (``int``, ``float``, ``str``, ``X | None``), ``list[X]`` takes one or more
  values (``nargs="+"``), a ``dict`` is read as JSON;
* a ``bool`` field that defaults to False is a switch (``--reuse-chain``), one
  that defaults to True is switched off by ``--no-<field>`` (``--no-dpo``);
* the help text is the field's entry in the numpy docstring's Parameters
  section;
* the parser's defaults are the dataclass defaults, a field without default
  is a required option;
* a field whose type is itself a dataclass (``prompt: PromptConfig``) is
  flattened: each of its fields is an option of its own (``--n-turns``), with
  the help text of the nested dataclass's docstring, and
  :func:`config_from_args` builds the nested config from them.

A field's own :func:`cli_options` (its ``metadata``) add or replace
:meth:`argparse.ArgumentParser.add_argument` keywords (``choices``, ``nargs``,
``required``, ``help``), and their ``flag`` renames the option (``--quiet``
for ``verbose``), as the ``metadata`` of Hugging Face's ``HfArgumentParser``
does; ``config_parser(overrides=...)`` does the same from outside the class.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "cli_options",
    "config_from_args",
    "config_parser",
    "docstring_parameters",
    "parse_config",
    "run_cli",
]

_ROLE = re.compile(r":[\w:]+:`~?([^`<]+?)(?:\s*<[^>]*>)?`")
_HEADER = re.compile(r"^(?P<names>[A-Za-z_][\w, ]*?)(?:\s*:\s*(?P<type>.*))?$")


def cli_options(**options: Any) -> dict[str, Any]:
    """A field's ``metadata`` with ``add_argument`` keywords for :func:`config_parser`.

    Parameters
    ----------
    **options
        ``choices``, ``nargs``, ``required``, ``help``, ... and ``flag`` (the
        option's spelling).

    Returns
    -------
    dict
        ``{"cli": options}``, for ``dataclasses.field(metadata=...)``.

    Examples
    --------
    >>> from dataclasses import dataclass, field
    >>> @dataclass
    ... class Config:
    ...     kind: str = field(default="a", metadata=cli_options(choices=["a", "b"]))
    >>> config_parser(Config, "demo").parse_args(["--kind", "b"]).kind
    'b'
    """
    return {"cli": options}


def config_from_args(args: argparse.Namespace, cls: type) -> Any:
    """Build a config dataclass from parsed args, skipping unset (``None``) ones.

    An option of a nested dataclass field arrives as ``"<field>.<name>"``
    (see :func:`config_parser`); those are gathered into that field's config.
    """
    values: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in vars(args).items():
        if value is None:
            continue
        outer, dot, inner = key.partition(".")
        if dot:
            nested.setdefault(outer, {})[inner] = value
        else:
            values[key] = value
    hints = typing.get_type_hints(cls)
    for outer, kwargs in nested.items():
        values[outer] = _unwrap_optional(hints[outer])(**kwargs)
    return cls(**values)


def parse_config(
    parser: argparse.ArgumentParser, cls: type, argv: Sequence[str] | None = None
) -> Any:
    """Parse ``argv`` (default: ``sys.argv[1:]``) into a ``cls`` config."""
    return config_from_args(parser.parse_args(argv), cls)


def docstring_parameters(doc: str | None) -> dict[str, str]:
    """Descriptions of the numpy docstring's Parameters section, per name.

    A header naming several parameters (``n_train, n_test : int``) gives each
    the same description; a parameter without description gets its type.

    Parameters
    ----------
    doc : str or None
        A numpy-style docstring.

    Returns
    -------
    dict of str to str
        One line of text per documented parameter.

    Examples
    --------
    >>> doc = '''Config.
    ...
    ...     Parameters
    ...     ----------
    ...     a, b : int
    ...         Two sizes,
    ...         in steps.
    ...     c : float, default=0.5
    ...     '''
    >>> docstring_parameters(doc)
    {'a': 'Two sizes, in steps.', 'b': 'Two sizes, in steps.', 'c': 'float, default=0.5'}
    """
    lines = (doc or "").expandtabs().splitlines()
    try:
        start = next(
            i
            for i, line in enumerate(lines[:-1])
            if line.strip() == "Parameters" and set(lines[i + 1].strip()) == {"-"}
        )
    except StopIteration:
        return {}
    kinds: dict[str, str] = {}
    texts: dict[str, list[str]] = {}
    indent: int | None = None
    names: list[str] = []
    for line in lines[start + 2 :]:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        indent = depth if indent is None else indent
        if depth < indent or set(line.strip()) == {"-"}:
            break  # the next section
        if depth > indent:
            for n in names:
                texts[n].append(line.strip())
            continue
        match = _HEADER.match(line.strip())
        if match is None:
            break
        names = [n.strip() for n in match["names"].split(",") if n.strip()]
        for n in names:
            kinds[n], texts[n] = match["type"] or "", []
    return {n: " ".join(texts[n]) or kinds[n] for n in kinds}


def _help_text(text: str | None) -> str | None:
    """Docstring text as plain ``--help`` text (roles and literals unmarked)."""
    if not text:
        return None
    text = _ROLE.sub(r"\1", text).replace("``", "")
    return text.replace("%", "%%")  # argparse formats help with %


def _unwrap_optional(tp: Any) -> Any:
    """``X`` for ``X | None`` (and ``Optional[X]``), else ``tp``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _argument(field: dataclasses.Field, tp: Any, help_: str | None) -> dict[str, Any]:
    """``add_argument`` keywords (and ``"flag"``) derived from one field."""
    default = _default(field)
    kw: dict[str, Any] = {"dest": field.name, "help": _help_text(help_)}
    tp = _unwrap_optional(tp)
    if default is dataclasses.MISSING:
        kw["required"] = True
    else:
        kw["default"] = default
    if tp is bool:
        on = bool(default) is True
        kw["action"] = "store_false" if on else "store_true"
        if on:
            kw["help"] = (
                f"Sets {field.name} to False ({(kw['help'] or 'see the config').rstrip('.')})."
            )
        kw["flag"] = f"--{'no-' if on else ''}{field.name.replace('_', '-')}"
        return kw
    kw["flag"] = "--" + field.name.replace("_", "-")
    origin = typing.get_origin(tp) or tp
    if origin in (list, tuple, Sequence):
        kw["nargs"] = "+"
        (tp,) = typing.get_args(tp)[:1] or (str,)
        origin = tp
    if origin is dict:
        kw["type"] = json.loads
    elif tp in (int, float):
        kw["type"] = tp
    return kw


def config_parser(
    cls: type,
    description: str,
    *,
    fields: Iterable[str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> argparse.ArgumentParser:
    """An argument parser with one option per field of the dataclass ``cls``.

    Parameters
    ----------
    cls : dataclass type
        The config; its annotations give the types, its defaults the defaults,
        its docstring's Parameters section the help texts.
    description : str
        The parser's description (first line of ``--help``).
    fields : iterable of str, default=None
        The fields offered on the command line, in this order; None offers
        every field, in the dataclass's order.
    overrides : mapping of str to mapping, default=None
        Per field, ``add_argument`` keywords to add or replace (``choices``,
        ``nargs``, ``required``, ``help``, ...); the key ``"flag"`` sets the
        option's spelling (``{"verbose": {"flag": "--quiet"}}``).

    Returns
    -------
    argparse.ArgumentParser
        Parsed values are named like the fields; :func:`config_from_args`
        turns them into a ``cls``.

    Examples
    --------
    >>> from dataclasses import dataclass, field
    >>> @dataclass
    ... class Config:
    ...     '''Parameters
    ...     ----------
    ...     seeds : list of int
    ...         Environment seeds.
    ...     dpo : bool
    ...         Run DPO.
    ...     '''
    ...     seeds: list[int] = field(default_factory=lambda: [0])
    ...     dpo: bool = True
    >>> args = config_parser(Config, "demo").parse_args(["--seeds", "1", "2", "--no-dpo"])
    >>> config_from_args(args, Config)
    Config(seeds=[1, 2], dpo=False)
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(
            f"The 'cls' parameter of config_parser must be a dataclass type. "
            f"Got {cls!r} instead."
        )
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    names = list(by_name) if fields is None else list(fields)
    overrides = dict(overrides or {})
    unknown = sorted((set(names) | set(overrides)) - set(by_name))
    if unknown:
        raise ValueError(
            f"The 'fields' and 'overrides' parameters of config_parser must name "
            f"fields of {cls.__name__} (one of {sorted(by_name)}). "
            f"Got unknown {unknown} instead."
        )
    hints = typing.get_type_hints(cls)
    helps = docstring_parameters(cls.__doc__)
    parser = argparse.ArgumentParser(description=description)
    for name in names:
        tp = _unwrap_optional(hints[name])
        if dataclasses.is_dataclass(tp):  # flattened: one option per inner field
            _add_nested(parser, by_name[name], tp)
            continue
        kw = _argument(by_name[name], hints[name], helps.get(name))
        kw.update(by_name[name].metadata.get("cli", {}))
        kw.update(overrides.get(name, {}))
        flag = kw.pop("flag")
        parser.add_argument(flag, **kw)
    return parser


def _add_nested(
    parser: argparse.ArgumentParser, outer: dataclasses.Field, tp: type
) -> None:
    """Options for the fields of ``outer``'s dataclass ``tp`` (dest ``outer.field``).

    Their defaults are those of ``outer``'s default instance.
    """
    hints = typing.get_type_hints(tp)
    helps = docstring_parameters(tp.__doc__)
    default = _default(outer)
    for inner in dataclasses.fields(tp):
        if dataclasses.is_dataclass(default):
            inner = copy.copy(inner)
            inner.default = getattr(default, inner.name)
            inner.default_factory = dataclasses.MISSING
        kw = _argument(inner, hints[inner.name], helps.get(inner.name))
        kw.update(inner.metadata.get("cli", {}))
        kw["dest"] = f"{outer.name}.{inner.name}"
        if "action" not in kw:
            kw["metavar"] = inner.name.upper()
        parser.add_argument(kw.pop("flag"), **kw)


def run_cli(
    parser: argparse.ArgumentParser,
    cls: type,
    main: Callable[[Any], Any],
    *,
    show: Callable[[Any], Any] | None = lambda result: result,
    indent: int | None = None,
) -> None:
    """Run ``main`` on the command line's config and print ``show(result)`` as JSON.

    ``show=None`` prints nothing.
    """
    result = main(parse_config(parser, cls))
    if show is not None:
        print(json.dumps(show(result), indent=indent))
