"""Write the format-1 router folders next to this file (run once, with r2vcal at
commit da9b385, the last writer before issue 16): ``python make_fixtures.py DIR``.

``tests/r2vcal/test_persist.py`` loads them with today's reader and compares the
predictions on the first five rows with ``expected.json``.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd


def main(out: Path) -> None:
    from r2vcal import CVaRBrierRouter, EntropyRouter, RandomRouter, save_router
    from r2vcal.baselines import OracleRouter

    warnings.simplefilter("ignore")
    X, y, g = data()
    routers = {
        "linear_temperature": CVaRBrierRouter(random_state=0),
        "linear_isotonic_strclasses": CVaRBrierRouter(
            calibration="isotonic", random_state=0
        ),
        "mlp": CVaRBrierRouter(hidden_layer_sizes=(4,), n_epochs=2, random_state=0),
        "entropy": EntropyRouter("a"),
        "random": RandomRouter(0.3, random_state=1),
        "oracle": OracleRouter(),
    }
    for name, r in routers.items():
        yy = np.where(y == 1, "esc", "keep") if "strclasses" in name else y
        r.fit(X, yy, groups=np.array([f"s{v}" for v in g]))
        d = save_router(r, out / name)
        proba = r.predict_proba(X.iloc[:5]).tolist()
        (d / "expected.json").write_text(json.dumps(proba) + "\n")


def data() -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The table the fixtures were fitted on (also used by the test)."""
    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(300, 3)), columns=["a", "b", "c"])
    X["y_counterfactual"] = (X["a"] + rng.normal(size=300) > 0.3).astype(int)
    y = X["y_counterfactual"].to_numpy()
    g = rng.integers(0, 4, size=300)
    return X, y, g


if __name__ == "__main__":
    main(Path(sys.argv[1]))
