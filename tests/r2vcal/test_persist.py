"""Tests of r2vcal.persist: pickle-free save/load, refusal of foreign files."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest

from r2vcal import (
    CVaRBrierRouter,
    EntropyRouter,
    RandomRouter,
    VerifierRouter,
    load_router,
    save_router,
)
from r2vcal.persist import RouterFileError


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(800, 3)), columns=["a", "b", "c"])
    y = (X["a"] + rng.normal(size=800) > 0.3).astype(int).to_numpy()
    g = rng.integers(0, 5, size=800)
    return X, y, g


@pytest.mark.parametrize(
    "router",
    [
        CVaRBrierRouter(random_state=0),
        CVaRBrierRouter(calibration="isotonic", random_state=0),
        CVaRBrierRouter(hidden_layer_sizes=(8,), n_epochs=2, random_state=0),
        EntropyRouter("a"),
        VerifierRouter("b"),
        RandomRouter(0.3, random_state=1),
    ],
    ids=lambda r: type(r).__name__ + str(getattr(r, "calibration", "")),
)
def test_round_trip_gives_identical_predictions(tmp_path, data, router):
    X, y, g = data
    router.fit(X, y, groups=g)
    path = save_router(router, tmp_path / "r")
    loaded = load_router(path)
    assert type(loaded) is type(router)
    assert loaded.get_params() == router.get_params()
    np.testing.assert_array_equal(loaded.predict_proba(X), router.predict_proba(X))
    np.testing.assert_array_equal(loaded.route(X), router.route(X))
    assert list(loaded.feature_names_in_) == ["a", "b", "c"]


def test_load_uses_no_pickle_and_no_torch(tmp_path, data):
    X, y, g = data
    r = CVaRBrierRouter(hidden_layer_sizes=(4,), n_epochs=1, random_state=0)
    save_router(r.fit(X, y, groups=g), tmp_path / "r")
    code = (
        "import sys, numpy as np, pandas as pd, r2vcal;"
        f"r = r2vcal.load_router({str(tmp_path / 'r')!r});"
        "r.predict_proba(np.zeros((2, 3)));"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


def test_refuses_newer_format(tmp_path, data):
    X, y, g = data
    path = save_router(CVaRBrierRouter(random_state=0).fit(X, y, groups=g), tmp_path)
    doc = json.loads((path / "router.json").read_text())
    doc["format_version"] = 99
    (path / "router.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="newer than this r2vcal"):
        load_router(path)


def test_refuses_hand_edited_json(tmp_path, data):
    X, y, g = data
    path = save_router(CVaRBrierRouter(random_state=0).fit(X, y, groups=g), tmp_path)
    text = (path / "router.json").read_text()
    edited = text.replace(
        '"cvar_tail": {\n      "__float__": "0.2"',
        '"cvar_tail": {\n      "__float__": "0.9"',
    )
    assert edited != text
    (path / "router.json").write_text(edited)
    with pytest.raises(ValueError, match="edited by hand"):
        load_router(path)


def test_refuses_replaced_arrays(tmp_path, data):
    X, y, g = data
    path = save_router(CVaRBrierRouter(random_state=0).fit(X, y, groups=g), tmp_path)
    np.savez(path / "arrays.npz", coef_=np.zeros((1, 3)))
    with pytest.raises(ValueError, match="arrays were replaced"):
        load_router(path)


def test_missing_or_foreign_files_get_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No saved router"):
        load_router(tmp_path / "nothing")
    (tmp_path / "router.json").write_text("{}")
    (tmp_path / "arrays.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="not an r2vcal router file"):
        load_router(tmp_path)


def test_unfitted_and_foreign_estimators_are_refused(tmp_path):
    from sklearn.linear_model import LogisticRegression

    with pytest.raises(ValueError, match="not fitted"):
        save_router(CVaRBrierRouter(), tmp_path)
    with pytest.raises(TypeError, match=r"joblib\.dump"):
        save_router(LogisticRegression(), tmp_path)


def test_pickle_and_joblib_still_work(tmp_path, data):
    X, y, g = data
    r = CVaRBrierRouter(random_state=0).fit(X, y, groups=g)
    again = pickle.loads(pickle.dumps(r))
    np.testing.assert_array_equal(again.predict_proba(X), r.predict_proba(X))
    joblib.dump(r, tmp_path / "r.joblib")
    np.testing.assert_array_equal(
        joblib.load(tmp_path / "r.joblib").predict_proba(X), r.predict_proba(X)
    )


# --- issue 16: well-formed-but-wrong files (checksums recomputed by an attacker) ---

FIXTURES = Path(__file__).parent / "data" / "routers_v1"


def _resign(folder: Path, change=None) -> None:
    """Recompute both checksums, as anyone editing a router file can."""
    doc = json.loads((folder / "router.json").read_text())
    doc.pop("content_sha256", None)
    blob = (folder / "arrays.npz").read_bytes()
    doc["arrays_sha256"] = hashlib.sha256(blob).hexdigest()
    if change is not None:
        change(doc)
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    doc["content_sha256"] = hashlib.sha256(canonical).hexdigest()
    (folder / "router.json").write_text(json.dumps(doc))


def _edit(folder: Path, change) -> None:
    _resign(folder, change)


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, allow_pickle=False)
    return buf.getvalue()


def _write_npz(folder: Path, members: dict[str, bytes], deflate=False) -> None:
    mode = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(folder / "arrays.npz", "w", mode) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    _resign(folder)


def _members(folder: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(folder / "arrays.npz") as zf:
        return {n: zf.read(n) for n in zf.namelist()}


@pytest.fixture
def saved(tmp_path, data):
    X, y, g = data
    r = CVaRBrierRouter(calibration="isotonic", random_state=0).fit(X, y, groups=g)
    return save_router(r, tmp_path / "r")


def _refused(folder: Path, file: str, field: str) -> RouterFileError:
    with pytest.raises(RouterFileError) as info:
        load_router(folder)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.path == str(folder / file) and str(folder / file) in str(err)
    assert field in err.field and repr(err.field) in str(err), str(err)
    return err


def test_unknown_param_names_the_param(saved):
    _edit(saved, lambda d: d["params"].update(cvar_weigth={"__float__": "1.0"}))
    err = _refused(saved, "router.json", "params.cvar_weigth")
    assert "did you mean 'cvar_weight'" in str(err)


def test_invalid_param_value_names_the_param(saved):
    _edit(saved, lambda d: d["params"].update(cvar_tail="high"))
    err = _refused(saved, "router.json", "params")
    assert "cvar_tail" in str(err)


@pytest.mark.parametrize("key", ["class", "arrays_sha256", "params", "attributes"])
def test_missing_required_key(saved, key):
    _edit(saved, lambda d: d.pop(key))
    _refused(saved, "router.json", key)


@pytest.mark.parametrize(
    ("key", "value"),
    [("params", [1]), ("attributes", "x"), ("class", 3), ("arrays_sha256", None)],
)
def test_wrong_type_of_top_level_key(saved, key, value):
    _edit(saved, lambda d: d.update({key: value}))
    err = _refused(saved, "router.json", key)
    assert "expected" in str(err) and "got" in str(err)


def test_unknown_top_level_key(saved):
    _edit(saved, lambda d: d.update(extra=1))
    _refused(saved, "router.json", "extra")


@pytest.mark.parametrize(
    "value",
    [3, [1], {"__int__": "3"}, {"__float__": 0.5}, {"__float__": "x"}, {"a": 1}],
)
def test_badly_encoded_param(saved, value):
    _edit(saved, lambda d: d["params"].update(cvar_tail=value))
    _refused(saved, "router.json", "params.cvar_tail")


def test_truncated_npz(saved):
    blob = (saved / "arrays.npz").read_bytes()
    (saved / "arrays.npz").write_bytes(blob[: len(blob) // 2])
    _resign(saved)
    _refused(saved, "arrays.npz", "<file>")


def test_deep_nesting(saved):
    deep = "[" * 100_000 + "]" * 100_000
    text = (saved / "router.json").read_text()
    (saved / "router.json").write_text(
        text.replace('"r2vcal_version"', f'"x": {deep}, "r2vcal_version"', 1)
    )
    _refused(saved, "router.json", "<file>")


def test_nesting_just_parseable(saved):
    deep = {"__seq__": "list", "items": []}
    for _ in range(40):
        deep = {"__seq__": "list", "items": [deep]}
    _edit(saved, lambda d: d["params"].update(hidden_layer_sizes=deep))
    _refused(saved, "router.json", "<file>")


def test_non_npy_member_is_refused(saved):
    members = _members(saved)
    members["coef_.npy"] = b"not an array at all"
    _write_npz(saved, members)
    _refused(saved, "arrays.npz", "coef_.npy")
    members = _members(saved)
    del members["coef_.npy"]
    members["coef_"] = _npy(np.zeros((1, 3)))
    _write_npz(saved, members)
    _refused(saved, "arrays.npz", "coef_")


def test_object_dtype_member_is_refused(saved):
    members = _members(saved)
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.array([1, "a"], dtype=object), allow_pickle=True)
    members["coef_.npy"] = buf.getvalue()
    _write_npz(saved, members)
    err = _refused(saved, "arrays.npz", "coef_.npy")
    assert "numeric dtype" in str(err)


def test_attribute_shadowing_a_method_is_refused(saved):
    members = _members(saved)
    members["predict_proba.npy"] = _npy(np.zeros(3))
    _write_npz(saved, members)
    _refused(saved, "arrays.npz", "predict_proba.npy")
    _write_npz(saved, {k: v for k, v in members.items() if "predict" not in k})
    _edit(saved, lambda d: d["attributes"].update(predict_proba={"__int__": 1}))
    err = _refused(saved, "router.json", "attributes.predict_proba")
    assert "shadow" in str(err)


def test_attribute_outside_allowlist_is_refused(saved):
    _edit(saved, lambda d: d["attributes"].update(evil_={"__int__": 1}))
    err = _refused(saved, "router.json", "attributes.evil_")
    assert "expected one of" in str(err)


def test_attribute_of_wrong_form(saved):
    _edit(saved, lambda d: d["attributes"].update(threshold_="0.5"))
    _refused(saved, "router.json", "attributes.threshold_")
    _edit(saved, lambda d: d["attributes"].update(threshold_={"__float__": "nan"}))
    _refused(saved, "router.json", "attributes.threshold_")


def test_wrong_shape_is_refused_before_predict(saved):
    members = _members(saved)
    members["coef_.npy"] = _npy(np.zeros((1, 7)))
    _write_npz(saved, members)
    err = _refused(saved, "router.json", "attributes")
    assert "cannot predict" in str(err)
    members["coef_.npy"] = _npy(np.zeros(3))
    _write_npz(saved, members)
    _refused(saved, "arrays.npz", "coef_.npy")


def test_nan_weights_are_refused(saved):
    members = _members(saved)
    members["coef_.npy"] = _npy(np.full((1, 3), np.nan))
    _write_npz(saved, members)
    _refused(saved, "router.json", "attributes")


def test_small_npz_claiming_many_elements_is_refused_before_allocating(saved):
    # ~32 MB of zeros deflates to ~32 kB; one element over the cap
    from r2vcal.persist import MAX_ARRAY_ELEMENTS

    members = _members(saved)
    members["loss_curve_.npy"] = _npy(np.zeros(MAX_ARRAY_ELEMENTS + 1, dtype=bool))
    _write_npz(saved, members, deflate=True)
    assert (saved / "arrays.npz").stat().st_size < 1_000_000
    err = _refused(saved, "arrays.npz", "loss_curve_.npy")
    assert "elements" in str(err)


def test_header_claiming_terabytes_is_refused(saved):
    members = _members(saved)
    real = _npy(np.zeros(3))
    fake = real.replace(b"'shape': (3,)", b"'shape': (1000000000000,)")
    assert fake != real
    members["loss_curve_.npy"] = fake
    _write_npz(saved, members)
    err = _refused(saved, "arrays.npz", "loss_curve_.npy")
    assert "1000000000000" in str(err)


def test_header_disagreeing_with_member_size_is_refused(saved):
    members = _members(saved)
    members["loss_curve_.npy"] = _npy(np.zeros(3))[:-8]
    _write_npz(saved, members)
    err = _refused(saved, "arrays.npz", "loss_curve_.npy")
    assert "holds" in str(err)


def test_arraylist_member_missing(tmp_path, data):
    X, y, g = data
    r = CVaRBrierRouter(hidden_layer_sizes=(4,), n_epochs=1, random_state=0)
    path = save_router(r.fit(X, y, groups=g), tmp_path / "mlp")
    members = _members(path)
    del members["coefs_.1.npy"]
    _write_npz(path, members)
    _refused(path, "arrays.npz", "coefs_.1.npy")


def test_class_not_registered(saved):
    _edit(saved, lambda d: d.update({"class": "os.system"}))
    _refused(saved, "router.json", "class")


def test_save_refuses_attribute_that_load_would_refuse(tmp_path, data):
    X, y, g = data
    r = CVaRBrierRouter(random_state=0).fit(X, y, groups=g)
    r.extra_state_ = 1
    with pytest.raises(TypeError, match=r"extra_state_.*_ATTRIBUTES"):
        save_router(r, tmp_path / "r")


@pytest.mark.parametrize(
    "name",
    sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())
    if FIXTURES.is_dir()
    else [],
)
def test_format_1_files_written_before_issue_16_still_load(name):
    sys.path.insert(0, str(FIXTURES))
    try:
        from make_fixtures import data as fixture_data
    finally:
        sys.path.remove(str(FIXTURES))
    X, _, _ = fixture_data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # retired parameters
        loaded = load_router(FIXTURES / name)
    expected = np.array(json.loads((FIXTURES / name / "expected.json").read_text()))
    np.testing.assert_array_equal(loaded.predict_proba(X.iloc[:5]), expected)


def test_cli_report_prints_one_line_and_exits_2(saved, tmp_path, capsys):
    from r2vcal.cli import main as cli_main

    _edit(saved, lambda d: d["params"].update(bogus={"__int__": 1}))
    code = cli_main(
        [
            "report",
            str(saved),
            str(tmp_path / "t.parquet"),
            "--target",
            "y",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "params.bogus" in err


def test_class_can_declare_extra_persisted_attributes(tmp_path, data, monkeypatch):
    X, y, g = data
    r = CVaRBrierRouter(random_state=0).fit(X, y, groups=g)
    r.extra_state_ = 0.25
    monkeypatch.setattr(
        CVaRBrierRouter,
        "_persist_attributes",
        {"extra_state_": "number"},
        raising=False,
    )
    loaded = load_router(save_router(r, tmp_path / "r"))
    assert loaded.extra_state_ == 0.25
    r.extra_state_ = np.zeros(2)  # declared as a number, not an array
    with pytest.raises(TypeError, match="stored as 'array'"):
        save_router(r, tmp_path / "r2")


def test_custom_class_with_and_without_allowlist(tmp_path, data):
    from r2vcal import persist
    from r2vcal.baselines import RandomRouter as Base

    X, y, _ = data

    class MyRouter(Base):
        pass

    try:
        persist.register_persistable(MyRouter)
        r = MyRouter(0.2).fit(X, y)
        r.anything_ = 3
        assert load_router(save_router(r, tmp_path / "a")).anything_ == 3
        persist.register_persistable(
            attributes={
                "base_rate_": "number",
                "threshold_": "number",
                "classes_": "array",
                "n_features_in_": "int",
                "feature_names_in_": "strarray",
            }
        )(MyRouter)
        with pytest.raises(TypeError, match="anything_"):
            save_router(r, tmp_path / "b")
        del r.anything_
        loaded = load_router(save_router(r, tmp_path / "b"))
        np.testing.assert_array_equal(loaded.predict_proba(X), r.predict_proba(X))
    finally:
        persist._REGISTRY.pop("MyRouter", None)
        persist._CUSTOM_ATTRIBUTES.pop("MyRouter", None)


@pytest.mark.parametrize("classes", [[0, 1, 2], [1], [1, 1]])
def test_classes_must_be_two_distinct_labels(saved, classes):
    members = _members(saved)
    members["classes_.npy"] = _npy(np.array(classes))
    _write_npz(saved, members)
    _refused(saved, "arrays.npz", "classes_.npy")
