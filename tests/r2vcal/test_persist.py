"""Tests of r2vcal.persist: pickle-free save/load, refusal of foreign files."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

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
