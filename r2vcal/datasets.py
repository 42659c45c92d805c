"""Loaders for the datasets shipped in the repository's ``datasets/`` folder.

The data live outside the package (``<repo>/datasets``). Set the environment
variable ``R2VCAL_DATA`` (or pass ``data_home``) to point at another folder that
holds the dataset sub-folders, e.g. for an installed (non-editable) package.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.utils import Bunch

__all__ = ["get_data_home", "load_mmlu_pro_cascade"]

_MMLU_DIR = "mmlu_pro_cascade"
_MMLU_FILE = "mmlu_pro_cascade.parquet"
_MMLU_NON_FEATURES = (
    "question_id",
    "category",
    "src",
    "slm_correct",
    "llm_correct",
    "y",
)


def get_data_home(data_home: str | os.PathLike[str] | None = None) -> Path:
    """Folder holding the dataset sub-folders.

    Parameters
    ----------
    data_home : str or path-like, default=None
        Explicit folder. None uses ``$R2VCAL_DATA`` when set, else the
        ``datasets/`` folder at the repository root.

    Returns
    -------
    path : Path

    Examples
    --------
    >>> from r2vcal.datasets import get_data_home
    >>> get_data_home("/tmp/r2vcal-data").as_posix()
    '/tmp/r2vcal-data'
    """
    if data_home is not None:
        return Path(data_home)
    env = os.environ.get("R2VCAL_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / "datasets"


def load_mmlu_pro_cascade(
    *,
    as_frame: bool = False,
    return_X_y: bool = False,
    return_groups: bool = False,
    data_home: str | os.PathLike[str] | None = None,
) -> Any:
    """Load the MMLU-Pro SLM→LLM cascade dataset (12,032 questions, 14 groups).

    Small model Llama-3.1-8B-Instruct, big model Llama-3.1-70B-Instruct; 30
    features of the small model's answer text and the question's subject and
    origin; target ``y = 1`` when escalating helps (small model wrong, big model
    right); groups = the 14 subject categories. See ``DATASHEET.md`` (also in
    ``DESCR``) for the construction and caveats.

    Parameters
    ----------
    as_frame : bool, default=False
        Return pandas objects (``data`` DataFrame, ``target``/``groups``/
        ``slm_success``/``llm_success`` Series) and set ``frame`` to the full
        table.
    return_X_y : bool, default=False
        Return ``(data, target)`` instead of a Bunch.
    return_groups : bool, default=False
        With ``return_X_y=True``, return ``(data, target, groups)``.
    data_home : str or path-like, default=None
        Folder holding ``mmlu_pro_cascade/``; see :func:`get_data_home`.

    Returns
    -------
    data : Bunch
        ``data`` (n, 30) float64, ``target`` (n,) int64, ``groups`` (n,) str,
        ``feature_names`` list, ``target_names`` ``["keep", "escalate"]``,
        ``slm_success`` / ``llm_success`` (n,) bool (for
        :func:`r2vcal.frontier.reliability_cost_frontier`), ``frame``
        (DataFrame if ``as_frame`` else None) and ``DESCR``.
    (data, target) or (data, target, groups) : tuple
        With ``return_X_y=True``.

    Raises
    ------
    FileNotFoundError
        If the Parquet file is not found, naming the path searched.

    Examples
    --------
    >>> from r2vcal.datasets import load_mmlu_pro_cascade
    >>> ds = load_mmlu_pro_cascade()
    >>> ds.data.shape, len(set(ds.groups))
    ((12032, 30), 14)
    >>> round(float(ds.target.mean()), 3)
    0.254
    """
    for name, value in (
        ("as_frame", as_frame),
        ("return_X_y", return_X_y),
        ("return_groups", return_groups),
    ):
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(
                f"The '{name}' parameter of load_mmlu_pro_cascade must be a bool. "
                f"Got {value!r} instead."
            )
    if return_groups and not return_X_y:
        raise ValueError(
            "The 'return_groups' parameter of load_mmlu_pro_cascade only applies "
            "with return_X_y=True. Got return_groups=True and return_X_y=False "
            "instead (the Bunch always has 'groups')."
        )
    folder = get_data_home(data_home) / _MMLU_DIR
    path = folder / _MMLU_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"The mmlu_pro_cascade table was not found at {path}. Set R2VCAL_DATA "
            "(or data_home) to the folder holding 'mmlu_pro_cascade/', or rebuild "
            "it with 'python datasets/mmlu_pro_cascade/build.py'."
        )
    frame = pd.read_parquet(path)
    missing = [c for c in _MMLU_NON_FEATURES if c not in frame.columns]
    if missing:
        raise ValueError(
            f"The table at {path} is missing column(s) {missing}; rebuild it with "
            "'python datasets/mmlu_pro_cascade/build.py'."
        )
    feature_names = [c for c in frame.columns if c not in _MMLU_NON_FEATURES]
    sheet = folder / "DATASHEET.md"
    descr = sheet.read_text(encoding="utf-8") if sheet.is_file() else ""

    X = frame[feature_names].astype(np.float64)
    y = frame["y"].astype(np.int64)
    groups = frame["category"].astype(str)
    slm = frame["slm_correct"].astype(bool)
    llm = frame["llm_correct"].astype(bool)
    if as_frame:
        data: Any = X
        target: Any = y.rename("y")
        grp: Any = groups.rename("category")
        slm_out: Any = slm
        llm_out: Any = llm
    else:
        data = X.to_numpy()
        target = y.to_numpy()
        grp = groups.to_numpy(dtype=object)
        slm_out = slm.to_numpy()
        llm_out = llm.to_numpy()
    if return_X_y:
        return (data, target, grp) if return_groups else (data, target)
    return Bunch(
        data=data,
        target=target,
        groups=grp,
        feature_names=feature_names,
        target_names=["keep", "escalate"],
        slm_success=slm_out,
        llm_success=llm_out,
        frame=frame if as_frame else None,
        DESCR=descr,
    )
