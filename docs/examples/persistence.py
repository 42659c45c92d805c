"""Save a fitted router without pickle, load it back, and see a tampered file refused."""

import json
import tempfile
from pathlib import Path

import numpy as np

from r2vcal import CVaRBrierRouter, load_router, save_router

rng = np.random.default_rng(0)
X = rng.normal(size=(2000, 6))
y = (X[:, 0] + rng.normal(size=2000) > 1).astype(int)
router = CVaRBrierRouter(random_state=0).fit(X, y, groups=rng.integers(0, 4, 2000))

with tempfile.TemporaryDirectory() as tmp:
    path = save_router(router, Path(tmp) / "router")
    print("files:", sorted(p.name for p in Path(path).iterdir()))
    loaded = load_router(path)
    same = np.array_equal(loaded.predict_proba(X), router.predict_proba(X))
    print("identical predictions after reload:", same)

    meta = Path(path) / "router.json"
    doc = json.loads(meta.read_text())
    doc["params"]["cvar_weight"] = 123.0  # edit by hand
    meta.write_text(json.dumps(doc))
    try:
        load_router(path)
    except ValueError as err:
        print("refused:", str(err).replace(tmp, "<tmp>")[:120])
