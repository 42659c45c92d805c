"""Save and load fitted routers without pickle: one JSON file and one ``.npz``.

A saved router is a directory::

    router/
      router.json   class, format version, parameters, scalar attributes,
                    checksums of the arrays and of the JSON content itself
      arrays.npz    numeric fitted arrays, one ``.npy`` member per array

Loading refuses a file written by a newer format version, a file whose content
does not match its checksums (edited by hand or corrupted), and classes outside
r2vcal's own registry. Because anyone can recompute the checksums, the loader
also validates everything it reads against the format's schema: the JSON keys
and their types, the constructor parameters of the class, an allowlist of
fitted-attribute names per class (a file cannot shadow a method such as
``predict_proba``), and each ``.npy`` header *before* its data (numeric dtypes
only, at most :data:`MAX_ARRAY_ELEMENTS` elements, member sizes within
:data:`MAX_ARRAYS_BYTES`); a member that is not ``.npy`` is refused. The
rebuilt router must then predict finite probabilities on a probe input. Every
refusal is one :class:`RouterFileError` (a ``ValueError``) that names the file
and the field. Plain ``joblib``/``pickle`` work as well, as scikit-learn users
expect; this format is for sharing routers safely.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import io
import json
import math
import warnings
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, overload

import numpy as np

from r2vcal._version import __version__

__all__ = [
    "FORMAT_VERSION",
    "MAX_ARRAYS_BYTES",
    "MAX_ARRAY_ELEMENTS",
    "MAX_JSON_BYTES",
    "RouterFileError",
    "load_router",
    "register_persistable",
    "save_router",
]

#: Version of the on-disk format written by :func:`save_router`.
FORMAT_VERSION = 1
#: Largest ``router.json`` :func:`load_router` reads, in bytes.
MAX_JSON_BYTES = 16 * 2**20
#: Largest number of elements (``prod(shape)``) of one saved array.
MAX_ARRAY_ELEMENTS = 2**25
#: Largest ``arrays.npz``, and largest total uncompressed size of its members.
MAX_ARRAYS_BYTES = 2**29
_MAX_DEPTH = 32
_MAX_MEMBERS = 4096
_MAX_ITEMS = 2**20
_MAX_FEATURES = 2**20
_JSON = "router.json"
_NPZ = "arrays.npz"
_KEYS = frozenset(
    {
        "format",
        "format_version",
        "r2vcal_version",
        "class",
        "params",
        "attributes",
        "arrays_sha256",
        "content_sha256",
    }
)
#: r2vcal's own persistable routers: class name -> "module:Class", imported when
#: a router is saved or loaded (the router modules never import this one).
_CLASSES: dict[str, str] = {
    "CVaRBrierRouter": "r2vcal.router:CVaRBrierRouter",
    "EntropyRouter": "r2vcal.baselines:EntropyRouter",
    "VerifierRouter": "r2vcal.baselines:VerifierRouter",
    "LogisticRouter": "r2vcal.baselines:LogisticRouter",
    "RandomRouter": "r2vcal.baselines:RandomRouter",
    "OracleRouter": "r2vcal.baselines:OracleRouter",
}
#: Third-party classes added by :func:`register_persistable`.
_REGISTRY: dict[str, type] = {}

_T = TypeVar("_T", bound=type)


class RouterFileError(ValueError):
    """A saved router that :func:`load_router` refuses.

    Attributes
    ----------
    path : str
        The file at fault (``router.json`` or ``arrays.npz``).
    field : str
        The field or member at fault, e.g. ``"params.cvar_tail"`` or
        ``"coef_.npy"``.
    """

    def __init__(self, path: str | Path, field: str, message: str) -> None:
        self.path = str(path)
        self.field = field
        super().__init__(f"{path}: field {field!r}: {message}")


@dataclass(frozen=True)
class _Attr:
    """How one fitted attribute may be stored.

    ``forms`` is a subset of ``{"number", "int", "str", "none", "array",
    "arraylist", "strarray"}``: a JSON int or float, a JSON int, a string,
    null, a numeric array in ``arrays.npz``, a list of numeric arrays there,
    or an array of strings in the JSON. ``ndim`` is the number of dimensions of (each) array.
    """

    forms: frozenset[str]
    ndim: int | None = None
    finite: bool = False


def _spec(*forms: str, ndim: int | None = None, finite: bool = False) -> _Attr:
    return _Attr(frozenset(forms), ndim, finite)


_COMMON = {
    "classes_": _spec("array", "strarray", ndim=1),
    "feature_names_in_": _spec("strarray", ndim=1),
    "n_features_in_": _spec("int"),
    "threshold_": _spec("number", finite=True),
}
_ISOTONIC = {
    "isotonic_x_": _spec("array", ndim=1),
    "isotonic_y_": _spec("array", ndim=1),
}
#: Allowlist of fitted attributes per r2vcal class: :func:`save_router` writes
#: and :func:`load_router` accepts these names only, in these forms.
_ATTRIBUTES: dict[str, dict[str, _Attr]] = {
    "CVaRBrierRouter": {
        **_COMMON,
        **_ISOTONIC,
        "coef_": _spec("array", ndim=2),
        "intercept_": _spec("array", ndim=1),
        "coefs_": _spec("arraylist", ndim=2),
        "intercepts_": _spec("arraylist", ndim=1),
        "cvar_": _spec("number"),
        "dual_weight_": _spec("number"),
        "objective_": _spec("number"),
        "temperature_": _spec("number", finite=True),
        "group_labels_": _spec("array", "strarray", ndim=1),
        "group_losses_": _spec("array", ndim=1),
        "loss_curve_": _spec("array", ndim=1),
        "n_iter_": _spec("int"),
        "calibration_": _spec("none", "str"),
        "calibration_objective_": _spec("array", ndim=1),
        "alpha_": _spec("number"),
        "alpha_objective_": _spec("array", ndim=1),
    },
    "EntropyRouter": {**_COMMON, **_ISOTONIC},
    "VerifierRouter": {**_COMMON, **_ISOTONIC},
    "RandomRouter": {**_COMMON, "base_rate_": _spec("number", finite=True)},
    "OracleRouter": dict(_COMMON),
    "LogisticRouter": {
        "classes_": _spec("array", "strarray"),
        "feature_names_in_": _spec("strarray"),
        "n_features_in_": _spec("int"),
        "threshold_": _spec("number"),
        "coef_": _spec("array"),
        "intercept_": _spec("array"),
        "n_iter_": _spec("int"),
    },
}
#: Fitted attributes a file must hold, per r2vcal class; each entry is a tuple
#: of alternatives (one of them must be present).
_REQUIRED: dict[str, list[tuple[str, ...]]] = {
    "CVaRBrierRouter": [
        ("classes_",),
        ("n_features_in_",),
        ("threshold_",),
        ("temperature_",),
        ("coef_", "coefs_"),
    ],
    "EntropyRouter": [
        ("classes_",),
        ("n_features_in_",),
        ("threshold_",),
        ("isotonic_x_",),
        ("isotonic_y_",),
    ],
    "RandomRouter": [
        ("classes_",),
        ("n_features_in_",),
        ("threshold_",),
        ("base_rate_",),
    ],
    "OracleRouter": [("classes_",), ("threshold_",)],
}
_REQUIRED["VerifierRouter"] = _REQUIRED["EntropyRouter"]
#: What reading a damaged ``arrays.npz`` can raise (``NotImplementedError``: e.g.
#: a header claiming "zip file version 23.5"); each becomes a RouterFileError.
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    OSError,
    ValueError,
    NotImplementedError,
    RuntimeError,
)
_CUSTOM_ATTRIBUTES: dict[str, dict[str, _Attr]] = {}
_ANY = _spec("number", "int", "array", "arraylist", "strarray")


@overload
def register_persistable(cls: _T, *, attributes: None = None) -> _T: ...


@overload
def register_persistable(
    cls: None = None, *, attributes: Mapping[str, str] | None = None
) -> Callable[[_T], _T]: ...


def register_persistable(
    cls: _T | None = None, *, attributes: Mapping[str, str] | None = None
) -> _T | Callable[[_T], _T]:
    """Class decorator: allow :func:`load_router` to rebuild a third-party ``cls``.

    Parameters
    ----------
    cls : type
        The router class (when used as ``@register_persistable``).
    attributes : mapping of str to str, optional
        Allowlist of fitted attributes and how each is stored: ``"number"``,
        ``"int"``, ``"array"``, ``"arraylist"`` or ``"strarray"`` (``|`` joins
        several). Without it, any public name ending in ``_`` that does not
        shadow a class attribute is accepted. r2vcal's own classes have theirs
        in this module; they need no registration.

    Returns
    -------
    type or decorator
    """

    def register(c: _T) -> _T:
        _REGISTRY[c.__name__] = c
        if attributes is not None:
            _CUSTOM_ATTRIBUTES[c.__name__] = {
                name: _spec(*forms.split("|")) for name, forms in attributes.items()
            }
        return c

    return register if cls is None else register(cls)


def _registry() -> dict[str, type]:
    """Every class :func:`load_router` may rebuild, by name (r2vcal's first)."""
    own: dict[str, type] = {}
    for name, target in _CLASSES.items():
        module, attr = target.split(":")
        own[name] = getattr(importlib.import_module(module), attr)
    return {**own, **_REGISTRY}


def _allowed_attributes(cls: type) -> dict[str, _Attr] | None:
    """The allowlist of ``cls``: this module's table (r2vcal classes) or the one
    given to :func:`register_persistable`, plus the class's own
    ``_persist_attributes`` (``{"name_": "number|array", ...}``) if it has one."""
    name = cls.__name__
    base: dict[str, _Attr] | None = None
    if name in _CUSTOM_ATTRIBUTES:
        base = _CUSTOM_ATTRIBUTES[name]
    elif cls.__module__.startswith("r2vcal.") and name in _ATTRIBUTES:
        base = _ATTRIBUTES[name]
    extra = getattr(cls, "_persist_attributes", None)
    if base is None or not isinstance(extra, dict) or not extra:
        return base
    return {**base, **{k: _spec(*str(v).split("|")) for k, v in extra.items()}}


def _attribute_name_error(cls: type, key: str) -> str | None:
    """Why ``key`` may not be a fitted attribute of ``cls`` (``None`` if it may)."""
    allowed = _allowed_attributes(cls)
    if not (key.isidentifier() and key.endswith("_") and not key.startswith("_")):
        return "not a fitted-attribute name (a public identifier ending in '_')"
    if hasattr(cls, key):
        return f"it would shadow {cls.__name__}.{key} of the class"
    if allowed is not None and key not in allowed:
        hint = difflib.get_close_matches(key, allowed, n=1)
        return (
            f"not a fitted attribute of {cls.__name__}; expected one of "
            f"{sorted(allowed)}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
        )
    return None


def _key(name: str) -> str:
    """A key read from a file, as it appears in a field name (quoted if odd)."""
    if name and all(c.isalnum() or c in "_.-" for c in name) and len(name) <= 64:
        return name
    return repr(name[:64])


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _encode_value(value: Any) -> Any:
    """JSON-safe form of a parameter or fitted attribute, or raise TypeError."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return {"__int__": int(value)}
    if isinstance(value, (float, np.floating)):
        return {"__float__": repr(float(value))}
    if isinstance(value, (tuple, list)):
        return {
            "__seq__": "tuple" if isinstance(value, tuple) else "list",
            "items": [_encode_value(v) for v in value],
        }
    if isinstance(value, np.ndarray) and value.dtype.kind in "OUS":
        return {
            "__strarray__": [str(v) for v in value.ravel().tolist()],
            "shape": list(value.shape),
        }
    raise TypeError(type(value).__name__)


def _form(value: Any) -> str:
    """The storage form of an encoded fitted attribute (see :class:`_Attr`)."""
    if isinstance(value, dict):
        if "__int__" in value:
            return "int"
        if "__float__" in value:
            return "number"
        if "__strarray__" in value:
            return "strarray"
        if "__arraylist__" in value:
            return "arraylist"
        if "__seq__" in value:
            return "seq"
    return "none" if value is None else type(value).__name__


def save_router(router: Any, path: str | Path) -> Path:
    """Save a fitted r2vcal router to the directory ``path`` (JSON + ``.npz``).

    Parameters
    ----------
    router : fitted estimator
        A :class:`~r2vcal.CVaRBrierRouter` or an r2vcal baseline router.
    path : str or Path
        Directory to write (created if missing; its two files are replaced).

    Returns
    -------
    Path
        The directory written.

    Examples
    --------
    >>> import numpy as np, tempfile
    >>> from r2vcal import CVaRBrierRouter, save_router, load_router
    >>> X = np.random.default_rng(0).normal(size=(200, 2)); y = (X[:, 0] > 0).astype(int)
    >>> r = CVaRBrierRouter(cvar_weight=0, calibration=None).fit(X, y)
    >>> d = save_router(r, tempfile.mkdtemp())
    >>> np.allclose(load_router(d).predict_proba(X), r.predict_proba(X))
    True
    """
    name = type(router).__name__
    if name not in _registry():
        raise TypeError(
            f"save_router handles r2vcal routers ({sorted(_registry())}); got {name}. "
            "Use joblib.dump for other estimators."
        )
    cls = type(router)
    fitted = [k for k in vars(router) if k.endswith("_") and not k.startswith("_")]
    if not fitted:
        raise ValueError(f"This {name} instance is not fitted yet; call fit first.")
    params = {
        k: _encode_value(v)
        for k, v in router.get_params(deep=False).items()
        if not isinstance(v, np.random.RandomState)
    }
    allowed = _allowed_attributes(cls) or {}
    attrs: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    for key in sorted(fitted):
        reason = _attribute_name_error(cls, key)
        if reason is not None:
            raise TypeError(
                f"{name}.{key} cannot be saved: {reason}. load_router would refuse "
                f"it; declare it in {name}._persist_attributes (e.g. "
                f"{{{key!r}: 'number'}}) or in r2vcal.persist._ATTRIBUTES[{name!r}]."
            )
        value = getattr(router, key)
        if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
            arrays[key] = value
            form = "array"
        elif (
            isinstance(value, list)
            and value
            and all(isinstance(v, np.ndarray) and v.dtype.kind in "biuf" for v in value)
        ):
            attrs[key] = {"__arraylist__": len(value)}
            for i, v in enumerate(value):
                arrays[f"{key}.{i}"] = v
            form = "arraylist"
        else:
            try:
                attrs[key] = _encode_value(value)
            except TypeError as exc:
                raise TypeError(
                    f"{name}.{key} of type {exc} cannot be saved without pickle."
                ) from None
            form = _form(attrs[key])
        spec = allowed.get(key, _ANY)
        if form not in spec.forms and not (form == "int" and "number" in spec.forms):
            raise TypeError(
                f"{name}.{key} is stored as {form!r}, but load_router accepts only "
                f"{sorted(spec.forms)} for it; update {name}._persist_attributes or "
                "r2vcal.persist._ATTRIBUTES."
            )
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    blob = buf.getvalue()
    doc = {
        "format": "r2vcal-router",
        "format_version": FORMAT_VERSION,
        "r2vcal_version": __version__,
        "class": name,
        "params": params,
        "attributes": attrs,
        "arrays_sha256": hashlib.sha256(blob).hexdigest(),
    }
    doc["content_sha256"] = hashlib.sha256(_canonical(doc)).hexdigest()
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    (out / _NPZ).write_bytes(blob)
    (out / _JSON).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return out


# ----------------------------------------------------------------------------
# Loading: every check raises RouterFileError(file, field, message).


def _got(value: Any) -> str:
    text = json.dumps(value) if _depth(value) <= 3 else f"a nested {type(value)}"
    return text if len(text) <= 80 else text[:77] + "..."


def _depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (iterative: no recursion limit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if d > _MAX_DEPTH:
            break
        if isinstance(v, dict):
            stack.extend((c, d + 1) for c in v.values())
        elif isinstance(v, list):
            stack.extend((c, d + 1) for c in v)
    return deepest


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _read_json(jpath: Path) -> Any:
    size = jpath.stat().st_size
    if size > MAX_JSON_BYTES:
        raise RouterFileError(
            jpath, "<file>", f"expected at most {MAX_JSON_BYTES} bytes; got {size}"
        )
    with open(jpath, "rb") as fh:
        raw = fh.read(MAX_JSON_BYTES + 1)
    try:
        doc = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constant,
        )
    except RecursionError:
        raise RouterFileError(
            jpath, "<file>", f"nested deeper than {_MAX_DEPTH} levels"
        ) from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, big ints
        raise RouterFileError(jpath, "<file>", f"not valid JSON ({exc})") from None
    if _depth(doc) > _MAX_DEPTH:
        raise RouterFileError(
            jpath, "<file>", f"nested deeper than {_MAX_DEPTH} levels"
        )
    return doc


def _check_document(doc: Any, jpath: Path) -> None:
    """Format, version, top-level keys and their types, and the checksum."""
    if not isinstance(doc, dict) or doc.get("format") != "r2vcal-router":
        raise RouterFileError(
            jpath,
            "format",
            "not an r2vcal router file (expected a JSON object with "
            '"format": "r2vcal-router", written by r2vcal.save_router)',
        )
    version = doc.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise RouterFileError(
            jpath,
            "format_version",
            f"expected a positive integer; got {_got(version)}",
        )
    if version > FORMAT_VERSION:
        raise RouterFileError(
            jpath,
            "format_version",
            f"version {version} is newer than this r2vcal ({__version__}) "
            f"reads (<= {FORMAT_VERSION}); upgrade r2vcal.",
        )
    missing, unknown = sorted(_KEYS - set(doc)), sorted(set(doc) - _KEYS)
    if missing:
        raise RouterFileError(jpath, _key(missing[0]), "required key is missing")
    if unknown:
        raise RouterFileError(
            jpath, _key(unknown[0]), f"unknown key; expected only {sorted(_KEYS)}"
        )
    types = {
        "r2vcal_version": str,
        "class": str,
        "params": dict,
        "attributes": dict,
        "arrays_sha256": str,
        "content_sha256": str,
    }
    for key, typ in types.items():
        if not isinstance(doc[key], typ):
            kind = "JSON object" if typ is dict else "string"
            raise RouterFileError(
                jpath, key, f"expected a {kind}; got {_got(doc[key])}"
            )
    body = {k: v for k, v in doc.items() if k != "content_sha256"}
    if doc["content_sha256"] != hashlib.sha256(_canonical(body)).hexdigest():
        raise RouterFileError(
            jpath,
            "content_sha256",
            "the file does not match its checksum: it was edited by hand or is "
            "corrupted. Refit and save the router again instead of editing it.",
        )


_ENCODED_KEYS = (
    frozenset({"__int__"}),
    frozenset({"__float__"}),
    frozenset({"__seq__", "items"}),
    frozenset({"__strarray__", "shape"}),
)


def _decode(value: Any, field: str, jpath: Path) -> Any:
    """Decode one parameter or scalar attribute, validating its encoding."""

    def bad(what: str) -> RouterFileError:
        return RouterFileError(jpath, field, f"expected {what}; got {_got(value)}")

    if value is None or isinstance(value, (bool, str)):
        return value
    if not isinstance(value, dict) or frozenset(value) not in _ENCODED_KEYS:
        raise bad(
            'null, true/false, a string, or an encoded value ({"__int__": ...}, '
            '{"__float__": "..."}, {"__seq__": ..., "items": [...]}, '
            '{"__strarray__": [...], "shape": [...]})'
        )
    if "__int__" in value:
        v = value["__int__"]
        if not isinstance(v, int) or isinstance(v, bool):
            raise bad('{"__int__": <integer>}')
        return v
    if "__float__" in value:
        v = value["__float__"]
        try:
            if not isinstance(v, str) or len(v) > 64:
                raise ValueError(v)
            return float(v)
        except ValueError:
            raise bad('{"__float__": "<repr of a float>"}') from None
    if "__seq__" in value:
        kind, items = value["__seq__"], value["items"]
        if kind not in ("tuple", "list") or not isinstance(items, list):
            raise bad('{"__seq__": "tuple" or "list", "items": [...]}')
        if len(items) > _MAX_ITEMS:
            raise bad(f"at most {_MAX_ITEMS} items")
        out = [_decode(v, f"{field}[{i}]", jpath) for i, v in enumerate(items)]
        return tuple(out) if kind == "tuple" else out
    strings, shape = value["__strarray__"], value["shape"]
    if (
        not isinstance(strings, list)
        or len(strings) > _MAX_ITEMS
        or not all(isinstance(s, str) for s in strings)
        or not isinstance(shape, list)
        or len(shape) > 8
        or not all(isinstance(n, int) and not isinstance(n, bool) for n in shape)
        or any(n < 0 for n in shape)
        or math.prod(shape) != len(strings)
    ):
        raise bad(
            '{"__strarray__": [<strings>], "shape": [<ints>]} with '
            "prod(shape) == number of strings"
        )
    return np.array(strings, dtype=object).reshape(shape)


def _param_names(cls: type) -> list[str]:
    get = getattr(cls, "_get_param_names", None)
    if get is not None:
        return list(get())
    import inspect

    sig = inspect.signature(cls.__init__)  # type: ignore[misc]
    return [p for p in sig.parameters if p != "self"]


def _decode_params(raw: dict[str, Any], cls: type, jpath: Path) -> dict[str, Any]:
    names = _param_names(cls)
    params = {}
    for key, value in raw.items():
        if key not in names:
            hint = difflib.get_close_matches(key, names, n=1)
            raise RouterFileError(
                jpath,
                f"params.{_key(key)}",
                f"{cls.__name__} has no parameter {key!r}; expected one of "
                f"{sorted(names)}" + (f" (did you mean {hint[0]!r}?)" if hint else ""),
            )
        params[key] = _decode(value, f"params.{_key(key)}", jpath)
    return params


def _decode_attributes(
    raw: dict[str, Any], cls: type, jpath: Path
) -> tuple[dict[str, Any], dict[str, int], dict[str, _Attr]]:
    """Scalar attributes, array-list lengths, and the specs of ``.npz`` members."""
    allowed = _allowed_attributes(cls)
    attrs: dict[str, Any] = {}
    lists: dict[str, int] = {}
    for key, value in raw.items():
        field = f"attributes.{_key(key)}"
        reason = _attribute_name_error(cls, key)
        if reason is not None:
            raise RouterFileError(jpath, field, reason)
        spec = _ANY if allowed is None else allowed[key]
        if isinstance(value, dict) and set(value) == {"__arraylist__"}:
            n = value["__arraylist__"]
            if "arraylist" not in spec.forms:
                raise RouterFileError(
                    jpath, field, f"expected {sorted(spec.forms)}; got an array list"
                )
            if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 4096:
                raise RouterFileError(
                    jpath,
                    field,
                    f'expected {{"__arraylist__": <1..4096>}}; got {_got(value)}',
                )
            lists[key] = n
            continue
        decoded = _decode(value, field, jpath)
        form = _form(value)
        ok = form in spec.forms or (form == "int" and "number" in spec.forms)
        if not ok:
            raise RouterFileError(
                jpath,
                field,
                f"expected {' or '.join(sorted(spec.forms))}"
                + (f" (stored in {_NPZ})" if "array" in spec.forms else "")
                + f"; got {_got(value)}",
            )
        if form == "strarray" and spec.ndim is not None and decoded.ndim != spec.ndim:
            raise RouterFileError(
                jpath,
                field,
                f"expected {spec.ndim} dimension(s); got shape {decoded.shape}",
            )
        if spec.finite and not math.isfinite(decoded):
            raise RouterFileError(
                jpath, field, f"expected a finite number; got {decoded!r}"
            )
        attrs[key] = decoded
    members: dict[str, _Attr] = {}
    for key, n in lists.items():
        spec = _ANY if allowed is None else allowed[key]
        members.update({f"{key}.{i}": spec for i in range(n)})
    candidates = allowed if allowed is not None else {}
    for key, spec in candidates.items():
        if "array" in spec.forms and key not in attrs:
            members[key] = spec
    return attrs, lists, members


#: Parameters a class no longer has; format-1 files that carry them still load
#: (the value is dropped with a warning: it only mattered for fitting).
_RETIRED_PARAMS: dict[str, frozenset[str]] = {
    "CVaRBrierRouter": frozenset({"calibration_fraction"}),
}


def _upgrade(
    cls: type,
    raw_params: dict[str, Any],
    attrs: dict[str, Any],
    array_names: set[str],
    jpath: Path,
) -> None:
    """Bring a file written by an earlier r2vcal up to the class's current form."""
    names = set(_param_names(cls))
    retired = sorted(
        k
        for k in raw_params
        if k in _RETIRED_PARAMS.get(cls.__name__, ()) and k not in names
    )
    for key in retired:
        del raw_params[key]
    if retired:
        warnings.warn(
            f"{jpath}: dropped parameter(s) {retired} that {cls.__name__} no longer "
            "has (they only affect fitting; predictions are unchanged). Save the "
            "router again to silence this.",
            UserWarning,
            stacklevel=3,
        )
    if cls.__name__ == "CVaRBrierRouter" and "calibration_" not in attrs:
        # Before calibration_ existed, isotonic applied iff calibration == "isotonic"
        # and the knots were fitted; otherwise temperature_ (1.0 = none) applied.
        chosen = raw_params.get("calibration")
        if chosen == "isotonic" and "isotonic_x_" in array_names:
            attrs["calibration_"] = "isotonic"
        elif chosen == "temperature" and "temperature_" in attrs:
            attrs["calibration_"] = "temperature"
        else:
            attrs["calibration_"] = None


def _read_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, npath: Path, spec: _Attr
) -> np.ndarray:
    """One ``.npy`` member: header first, caps, then exactly the declared bytes."""
    name = _key(info.filename)

    def bad(message: str) -> RouterFileError:
        return RouterFileError(npath, name, message)

    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise bad(f"unsupported zip compression {info.compress_type}")
    if info.flag_bits & 0x1:
        raise bad("encrypted zip members are not supported")
    fmt = np.lib.format
    with zf.open(info) as fh:
        version = fmt.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(fh)
        else:
            raise bad(f"expected .npy format version 1.0 or 2.0; got {version}")
        if dtype.kind not in "biuf" or dtype.hasobject or dtype.fields is not None:
            raise bad(f"expected a numeric dtype (bool, int, float); got {dtype}")
        if dtype.subdtype is not None or dtype.itemsize > 16:
            raise bad(f"expected a plain numeric dtype; got {dtype}")
        n = math.prod(shape)
        if n > MAX_ARRAY_ELEMENTS:
            raise bad(
                f"header declares shape {shape} ({n} elements); at most "
                f"{MAX_ARRAY_ELEMENTS} are allowed"
            )
        if spec.ndim is not None and len(shape) != spec.ndim:
            raise bad(f"expected {spec.ndim} dimension(s); got shape {shape}")
        nbytes = n * dtype.itemsize
        header = fh.tell()
        if header + nbytes != info.file_size:
            raise bad(
                f"header declares shape {shape} of {dtype} ({nbytes} bytes) but "
                f"the member holds {info.file_size - header} data bytes"
            )
        data = fh.read(nbytes)
        if len(data) != nbytes:
            raise bad(f"truncated: expected {nbytes} data bytes; got {len(data)}")
    flat = np.frombuffer(data, dtype=dtype)
    return np.array(flat.reshape(shape, order="F" if fortran else "C"), order="C")


def _read_arrays(
    npath: Path,
    blob: bytes,
    members: dict[str, _Attr],
    open_name: Callable[[str], bool],
) -> dict[str, np.ndarray]:
    try:
        zf = zipfile.ZipFile(io.BytesIO(blob))
    except _ZIP_ERRORS as exc:
        raise RouterFileError(
            npath, "<file>", f"not a readable .npz (zip) archive ({exc})"
        ) from None
    arrays: dict[str, np.ndarray] = {}
    with zf:
        infos = zf.infolist()
        if len(infos) > _MAX_MEMBERS:
            raise RouterFileError(
                npath, "<file>", f"expected at most {_MAX_MEMBERS} members"
            )
        total = sum(i.file_size for i in infos)
        if total > MAX_ARRAYS_BYTES:
            raise RouterFileError(
                npath,
                "<file>",
                f"members declare {total} uncompressed bytes; at most "
                f"{MAX_ARRAYS_BYTES} are allowed",
            )
        for info in infos:
            key = info.filename[:-4]
            name = _key(info.filename)
            if (
                not info.filename.endswith(".npy")
                or "/" in info.filename
                or info.is_dir()
            ):
                raise RouterFileError(
                    npath, name, "not a .npy member; arrays.npz holds .npy files only"
                )
            if key in arrays:
                raise RouterFileError(npath, name, "duplicate member")
            if key not in members and open_name(key):
                members[key] = _ANY
            if key not in members:
                raise RouterFileError(
                    npath,
                    name,
                    "not an array this router stores; expected members "
                    f"{sorted(m + '.npy' for m in members)}",
                )
            try:
                arrays[key] = _read_member(zf, info, npath, members[key])
            except RouterFileError:
                raise
            except _ZIP_ERRORS as exc:
                raise RouterFileError(
                    npath, name, f"unreadable ({type(exc).__name__}: {exc})"
                ) from None
    return arrays


def _probe(est: Any, jpath: Path) -> None:
    """The rebuilt router must predict finite probabilities on zeros."""
    n = getattr(est, "n_features_in_", None)
    if n is None or not hasattr(est, "predict_proba"):
        return
    names = getattr(est, "feature_names_in_", None)
    if not 1 <= n <= _MAX_FEATURES:
        raise RouterFileError(
            jpath,
            "attributes.n_features_in_",
            f"expected an integer in [1, {_MAX_FEATURES}]; got {n}",
        )
    if names is not None and len(names) != n:
        raise RouterFileError(
            jpath,
            "attributes.feature_names_in_",
            f"expected n_features_in_ = {n} names; got {len(names)}",
        )
    X: Any = np.zeros((2, n))
    if names is not None:
        import pandas as pd

        X = pd.DataFrame(X, columns=[str(c) for c in names])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            proba = np.asarray(est.predict_proba(X), dtype=np.float64)
            est.predict(X)
            if hasattr(est, "route"):
                est.route(X)
    except Exception as exc:  # any failure means the fitted state is inconsistent
        raise RouterFileError(
            jpath,
            "attributes",
            f"the rebuilt {type(est).__name__} cannot predict on a probe input "
            f"({type(exc).__name__}: {exc}); its saved attributes and arrays do "
            "not fit together",
        ) from None
    if proba.shape != (2, 2) or not np.all((proba >= 0) & (proba <= 1)):
        raise RouterFileError(
            jpath,
            "attributes",
            f"the rebuilt {type(est).__name__} predicts {proba.tolist()!r} on a "
            "probe input; expected finite probabilities of shape (2, 2)",
        )


def load_router(path: str | Path) -> Any:
    """Load a router saved by :func:`save_router`.

    Parameters
    ----------
    path : str or Path
        The directory written by :func:`save_router` (or its ``router.json``).

    Returns
    -------
    estimator
        The fitted router; prediction needs numpy only.

    Raises
    ------
    FileNotFoundError
        When ``path`` holds no saved router.
    RouterFileError
        A ``ValueError`` naming the file and the field, when the file is from a
        newer format version, was edited by hand or is corrupted, names a class
        outside r2vcal, or breaks the format's schema (wrong types, unknown
        parameters or attributes, non-``.npy`` members, arrays over
        :data:`MAX_ARRAY_ELEMENTS` elements, inconsistent shapes).
    """
    p = Path(path)
    if p.is_file() and p.name == _JSON:
        p = p.parent
    jpath, npath = p / _JSON, p / _NPZ
    if not jpath.is_file() or not npath.is_file():
        raise FileNotFoundError(
            f"No saved router at {str(p)!r}: expected {_JSON} and {_NPZ} in that "
            "directory (written by r2vcal.save_router)."
        )
    doc = _read_json(jpath)
    _check_document(doc, jpath)
    cls = _registry().get(doc["class"])
    if cls is None:
        raise RouterFileError(
            jpath,
            "class",
            f"{doc['class']!r} is not an r2vcal router ({sorted(_registry())})",
        )
    raw_params = dict(doc["params"])
    attrs, lists, members = _decode_attributes(doc["attributes"], cls, jpath)
    size = npath.stat().st_size
    if size > MAX_ARRAYS_BYTES:
        raise RouterFileError(
            npath, "<file>", f"expected at most {MAX_ARRAYS_BYTES} bytes; got {size}"
        )
    blob = npath.read_bytes()
    if hashlib.sha256(blob).hexdigest() != doc["arrays_sha256"]:
        raise RouterFileError(
            npath,
            "<file>",
            f"does not match the checksum recorded in {_JSON} (arrays_sha256): the "
            "arrays were replaced or corrupted.",
        )
    if _allowed_attributes(cls) is None:  # registered without an allowlist

        def open_name(key: str) -> bool:
            return key not in attrs and _attribute_name_error(cls, key) is None

    else:

        def open_name(key: str) -> bool:
            return False

    arrays = _read_arrays(npath, blob, members, open_name)
    for key, n in lists.items():
        missing = [f"{key}.{i}.npy" for i in range(n) if f"{key}.{i}" not in arrays]
        if missing:
            raise RouterFileError(
                npath, missing[0], f"member missing ({_JSON} lists {n} arrays)"
            )
    if cls.__module__.startswith("r2vcal.") and cls.__name__ not in _CUSTOM_ATTRIBUTES:
        present = set(attrs) | set(lists) | set(arrays)
        for alternatives in _REQUIRED.get(cls.__name__, []):
            if not present.intersection(alternatives):
                raise RouterFileError(
                    jpath,
                    f"attributes.{alternatives[0]}",
                    f"required fitted attribute is missing (neither in {_JSON} "
                    f"nor in {_NPZ}); expected one of {list(alternatives)}",
                )
        classes = attrs.get("classes_", arrays.get("classes_"))
        if classes is not None and (
            classes.size != 2 or len({str(c) for c in classes.tolist()}) != 2
        ):
            in_json = "classes_" in attrs
            raise RouterFileError(
                jpath if in_json else npath,
                "attributes.classes_" if in_json else "classes_.npy",
                f"expected the two distinct classes of a binary router; got "
                f"{classes.tolist()[:5]!r}",
            )
    _upgrade(cls, raw_params, attrs, set(arrays), jpath)
    params = _decode_params(raw_params, cls, jpath)
    try:
        est = cls(**params)
    except TypeError as exc:
        raise RouterFileError(jpath, "params", str(exc)) from None
    validate = getattr(est, "_validate_params", None)
    if validate is not None:
        try:
            validate()
        except (TypeError, ValueError) as exc:
            raise RouterFileError(jpath, "params", str(exc)) from None
    for key, value in attrs.items():
        setattr(est, key, value)
    for key, n in lists.items():
        setattr(est, key, [arrays.pop(f"{key}.{i}") for i in range(n)])
    for key, value in arrays.items():
        setattr(est, key, value)
    _probe(est, jpath)
    return est
