"""Property tests (hypothesis) for ``load_router`` over mutated router folders.

Every mutation is followed, most of the time, by recomputing both checksums (as
anyone can), so the schema checks rather than the checksums are what is tested.
The property: ``load_router`` either returns a router that predicts finite
probabilities, or raises one :class:`~r2vcal.persist.RouterFileError` (a
``ValueError``) naming the file and a field; never another exception.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
import warnings
import zipfile
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from r2vcal import CVaRBrierRouter, EntropyRouter, load_router, save_router
from r2vcal.persist import RouterFileError

SETTINGS = settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
NAMES = [
    "predict_proba",
    "fit",
    "__class__",
    "__dict__",
    "coef_",
    "coefs_",
    "coefs_.0",
    "intercept_",
    "classes_",
    "threshold_",
    "n_features_in_",
    "feature_names_in_",
    "isotonic_x_",
    "temperature_",
    "calibration_",
    "cvar_tail",
    "hidden_layer_sizes",
    "random_state",
    "evil_",
    "x",
]


@cache
def _originals() -> dict[str, dict[str, bytes]]:
    """Saved folders (file name -> bytes) of three kinds of router."""
    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(300, 3)), columns=["a", "b", "c"])
    y = (X["a"] + rng.normal(size=300) > 0.3).astype(int).to_numpy()
    g = rng.integers(0, 4, size=300)
    routers = {
        "isotonic": CVaRBrierRouter(calibration="isotonic", random_state=0),
        "mlp": CVaRBrierRouter(hidden_layer_sizes=(3,), n_epochs=1, random_state=0),
        "entropy": EntropyRouter("a"),
    }
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, r in routers.items():
            d = save_router(r.fit(X, y, groups=g), Path(tmp) / name)
            out[name] = {p.name: p.read_bytes() for p in d.iterdir()}
    return out


def _sign(doc: dict[str, Any], blob: bytes) -> dict[str, Any]:
    doc = {k: v for k, v in doc.items() if k != "content_sha256"}
    doc["arrays_sha256"] = hashlib.sha256(blob).hexdigest()
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    doc["content_sha256"] = hashlib.sha256(canonical).hexdigest()
    return doc


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (tuple of keys/indices) into a parsed JSON document."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


def _get(doc: Any, path: tuple) -> Any:
    for key in path:
        doc = doc[key]
    return doc


scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
    | st.sampled_from(NAMES)
)
encoded = st.one_of(
    st.builds(lambda v: {"__int__": v}, scalars),
    st.builds(lambda v: {"__float__": v}, scalars | st.sampled_from(["nan", "inf"])),
    st.builds(
        lambda k, items: {"__seq__": k, "items": items},
        st.sampled_from(["tuple", "list", "set"]),
        st.lists(st.builds(lambda v: {"__int__": v}, st.integers(-3, 10)), max_size=3),
    ),
    st.builds(
        lambda s, shape: {"__strarray__": s, "shape": shape},
        st.lists(st.sampled_from(["a", "b", "c", "zz"]), max_size=4),
        st.lists(st.integers(-1, 4), max_size=3),
    ),
    st.builds(lambda n: {"__arraylist__": n}, scalars | st.integers(0, 5)),
)
json_values = st.recursive(
    scalars | encoded,
    lambda c: (
        st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3)
    ),
    max_leaves=6,
)


def _check_written(doc: dict, blob: bytes) -> None:
    """Write ``doc`` and ``blob`` as a saved router and :func:`_check` it."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "router.json").write_text(json.dumps(doc))
        (folder / "arrays.npz").write_bytes(blob)
        _check(folder)


def _check(folder: Path) -> None:
    """The property shared by both suites."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est = load_router(folder)
    except RouterFileError as err:
        assert isinstance(err, ValueError)
        assert err.path in str(err) and err.path.startswith(str(folder))
        assert err.field and repr(err.field) in str(err)
        event(f"refused: {Path(err.path).name}")
        return
    event("loaded")
    n = est.n_features_in_
    names = getattr(est, "feature_names_in_", None)
    X = np.linspace(-3, 3, 4 * n).reshape(4, n)
    if names is not None:
        X = pd.DataFrame(X, columns=[str(c) for c in names])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = est.predict_proba(X)
        est.route(X)
    assert p.shape == (4, 2) and np.all((p >= 0) & (p <= 1))


@pytest.mark.parametrize("kind", ["isotonic", "mlp", "entropy"])
@SETTINGS
@given(data=st.data())
def test_mutated_router_json(kind, data):
    files = _originals()[kind]
    doc = json.loads(files["router.json"])
    blob = files["arrays.npz"]
    n_edits = data.draw(st.integers(1, 3), label="n_edits")
    for _ in range(n_edits):
        paths = [p for p in _paths(doc) if p]
        op = data.draw(st.sampled_from(["set", "delete", "add"]), label="op")
        path = data.draw(st.sampled_from(paths), label="path")
        parent = _get(doc, path[:-1])
        if op == "set":
            parent[path[-1]] = data.draw(json_values, label="value")
        elif op == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            key = data.draw(st.sampled_from(NAMES) | st.text(max_size=5), label="key")
            parent[key] = data.draw(json_values, label="value")
    if data.draw(st.integers(0, 9), label="resign") > 0:
        doc = _sign(doc, blob)
    _check_written(doc, blob)


def _random_npy(data: st.DataObject) -> bytes:
    kind = data.draw(st.sampled_from(["array", "object", "huge", "bytes"]), label="npy")
    if kind == "bytes":
        return data.draw(st.binary(max_size=64), label="raw")
    buf = io.BytesIO()
    if kind == "object":
        np.lib.format.write_array(buf, np.array([1, "a"], dtype=object))
        return buf.getvalue()
    dtype = data.draw(st.sampled_from(["<f8", ">f4", "<i8", "|b1", "<c16", "<U2"]))
    shape = tuple(data.draw(st.lists(st.integers(0, 4), max_size=3), label="shape"))
    np.lib.format.write_array(buf, np.ones(shape, dtype=dtype), allow_pickle=False)
    raw = buf.getvalue()
    if kind == "huge":
        huge = data.draw(st.sampled_from([2**25 + 1, 10**12, 2**62]), label="huge")
        raw = raw.replace(b"'shape': (", f"'shape': ({huge}, ".encode(), 1)
    return raw


@pytest.mark.parametrize("kind", ["isotonic", "mlp"])
@SETTINGS
@given(data=st.data())
def test_mutated_arrays_npz(kind, data):
    files = _originals()[kind]
    doc = json.loads(files["router.json"])
    with zipfile.ZipFile(io.BytesIO(files["arrays.npz"])) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    op = data.draw(
        st.sampled_from(["replace", "add", "remove", "rename", "truncate", "flip"]),
        label="op",
    )
    name = data.draw(st.sampled_from(sorted(members)), label="member")
    if op == "replace":
        members[name] = _random_npy(data)
    elif op == "add":
        new = data.draw(st.sampled_from([n + ".npy" for n in NAMES] + ["x.txt", "d/"]))
        members[new] = _random_npy(data)
    elif op == "remove":
        del members[name]
    elif op == "rename":
        new = data.draw(st.sampled_from([n + ".npy" for n in NAMES] + ["x.txt"]))
        members[new] = members.pop(name)
    buf = io.BytesIO()
    deflate = data.draw(st.booleans(), label="deflate")
    mode = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(buf, "w", mode) as zf:
        for n, raw in members.items():
            zf.writestr(n, raw)
    blob = buf.getvalue()
    if op == "truncate":
        blob = blob[: data.draw(st.integers(0, len(blob) - 1), label="cut")]
    elif op == "flip":
        i = data.draw(st.integers(0, len(blob) - 1), label="at")
        blob = blob[:i] + bytes([blob[i] ^ 0xFF]) + blob[i + 1 :]
    doc = _sign(doc, blob)
    _check_written(doc, blob)
