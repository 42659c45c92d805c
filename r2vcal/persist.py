"""Save and load fitted routers without pickle: one JSON file and one ``.npz``.

A saved router is a directory::

    router/
      router.json   class, format version, parameters, scalar attributes,
                    checksums of the arrays and of the JSON content itself
      arrays.npz    numeric fitted arrays, read with ``allow_pickle=False``

Loading refuses a file written by a newer format version, a file whose content
does not match its checksums (edited by hand or corrupted), and classes outside
r2vcal's own registry. Plain ``joblib``/``pickle`` work as well, as scikit-learn
users expect; this format is for sharing routers safely.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

import r2vcal

__all__ = ["FORMAT_VERSION", "load_router", "register_persistable", "save_router"]

#: Version of the on-disk format written by :func:`save_router`.
FORMAT_VERSION = 1
_JSON = "router.json"
_NPZ = "arrays.npz"
_REGISTRY: dict[str, type] = {}


def register_persistable(cls: type) -> type:
    """Class decorator: allow :func:`load_router` to rebuild ``cls`` by name."""
    _REGISTRY[cls.__name__] = cls
    return cls


def _registry() -> dict[str, type]:
    # import lazily so that every persistable class has registered itself
    from r2vcal import baselines, router  # noqa: F401

    return _REGISTRY


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


def _decode_value(value: Any) -> Any:
    if isinstance(value, dict):
        if "__int__" in value:
            return int(value["__int__"])
        if "__float__" in value:
            return float(value["__float__"])
        if "__seq__" in value:
            items = [_decode_value(v) for v in value["items"]]
            return tuple(items) if value["__seq__"] == "tuple" else items
        if "__strarray__" in value:
            return np.array(value["__strarray__"], dtype=object).reshape(value["shape"])
        raise ValueError(f"unknown encoded value {sorted(value)!r}")
    return value


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
    fitted = [k for k in vars(router) if k.endswith("_") and not k.startswith("_")]
    if not fitted:
        raise ValueError(f"This {name} instance is not fitted yet; call fit first.")
    params = {
        k: _encode_value(v)
        for k, v in router.get_params(deep=False).items()
        if not isinstance(v, np.random.RandomState)
    }
    attrs: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    for key in sorted(fitted):
        value = getattr(router, key)
        if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
            arrays[key] = value
        elif (
            isinstance(value, list)
            and value
            and all(isinstance(v, np.ndarray) and v.dtype.kind in "biuf" for v in value)
        ):
            attrs[key] = {"__arraylist__": len(value)}
            for i, v in enumerate(value):
                arrays[f"{key}.{i}"] = v
        else:
            try:
                attrs[key] = _encode_value(value)
            except TypeError as exc:
                raise TypeError(
                    f"{name}.{key} of type {exc} cannot be saved without pickle."
                ) from None
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    blob = buf.getvalue()
    doc = {
        "format": "r2vcal-router",
        "format_version": FORMAT_VERSION,
        "r2vcal_version": r2vcal.__version__,
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
    ValueError
        When the file is from a newer format version, was edited by hand or is
        corrupted, or names a class outside r2vcal.
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
    try:
        doc = json.loads(jpath.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{jpath} is not valid JSON ({exc}).") from None
    if not isinstance(doc, dict) or doc.get("format") != "r2vcal-router":
        raise ValueError(f"{jpath} is not an r2vcal router file.")
    version = doc.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{jpath} has format version {version!r}, newer than this r2vcal "
            f"({r2vcal.__version__}) reads (<= {FORMAT_VERSION}); upgrade r2vcal."
        )
    claimed = doc.pop("content_sha256", None)
    if claimed != hashlib.sha256(_canonical(doc)).hexdigest():
        raise ValueError(
            f"{jpath} does not match its checksum: it was edited by hand or is "
            "corrupted. Refit and save the router again instead of editing it."
        )
    blob = npath.read_bytes()
    if hashlib.sha256(blob).hexdigest() != doc["arrays_sha256"]:
        raise ValueError(
            f"{npath} does not match the checksum recorded in {_JSON}: the arrays "
            "were replaced or corrupted."
        )
    cls = _registry().get(doc["class"])
    if cls is None:
        raise ValueError(
            f"{jpath} names class {doc['class']!r}, which is not an r2vcal router "
            f"({sorted(_registry())})."
        )
    params = {k: _decode_value(v) for k, v in doc["params"].items()}
    est = cls(**params)
    with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    for key, value in doc["attributes"].items():
        if isinstance(value, dict) and "__arraylist__" in value:
            setattr(
                est,
                key,
                [arrays.pop(f"{key}.{i}") for i in range(value["__arraylist__"])],
            )
        else:
            setattr(est, key, _decode_value(value))
    for key, value in arrays.items():
        setattr(est, key, value)
    return est
