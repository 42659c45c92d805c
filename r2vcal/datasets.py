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

__all__ = [
    "get_data_home",
    "load_mmlu_pro_agreement",
    "load_mmlu_pro_cascade",
    "load_textworld_r2v",
    "load_textworld_tiny",
]

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
    return _load_mmlu(
        "load_mmlu_pro_cascade",
        "mmlu_pro_cascade",
        _MMLU_NON_FEATURES,
        as_frame=as_frame,
        return_X_y=return_X_y,
        return_groups=return_groups,
        data_home=data_home,
    )


def load_mmlu_pro_agreement(
    *,
    as_frame: bool = False,
    return_X_y: bool = False,
    return_groups: bool = False,
    data_home: str | os.PathLike[str] | None = None,
) -> Any:
    """Load the MMLU-Pro agreement cascade (12,032 questions, K = 8, 14 groups).

    Eight small open models (7-9B) answer each question: their answers are the
    K = 8 candidates, the plurality vote is the small side's answer, and
    Llama-3.1-70B-Instruct is the teacher. Seven agreement features (top-answer
    share, margin, answer entropy, ...) take only 109 distinct values: a
    tie-heavy table, the shape of real self-consistency cascades. Target
    ``y = 1`` when the vote is wrong and the teacher right; groups = the 14
    subject categories. See ``DATASHEET.md`` (also in ``DESCR``).

    Parameters
    ----------
    as_frame, return_X_y, return_groups, data_home
        As in :func:`load_mmlu_pro_cascade`.

    Returns
    -------
    data : Bunch
        As in :func:`load_mmlu_pro_cascade`, with 7 features.

    Examples
    --------
    >>> from r2vcal.datasets import load_mmlu_pro_agreement
    >>> ds = load_mmlu_pro_agreement()
    >>> ds.data.shape, len(set(ds.groups))
    ((12032, 7), 14)
    """
    return _load_mmlu(
        "load_mmlu_pro_agreement",
        "mmlu_pro_agreement",
        tuple(c for c in _MMLU_NON_FEATURES if c != "src"),
        as_frame=as_frame,
        return_X_y=return_X_y,
        return_groups=return_groups,
        data_home=data_home,
    )


def _load_mmlu(
    caller: str,
    dirname: str,
    non_features: tuple[str, ...],
    *,
    as_frame: bool,
    return_X_y: bool,
    return_groups: bool,
    data_home: Any,
) -> Any:
    """The shared body of the MMLU-Pro loaders: ``<dirname>/<dirname>.parquet``
    built by ``datasets/<dirname>/build.py``; every column not in
    ``non_features`` is a feature, in the table's order."""
    _check_flags(caller, as_frame, return_X_y, return_groups)
    rebuild = f"python datasets/{dirname}/build.py"
    filename = f"{dirname}.parquet"
    frame, descr = _read_shipped(dirname, filename, rebuild, data_home)
    missing = [c for c in non_features if c not in frame.columns]
    if missing:
        path = get_data_home(data_home) / dirname / filename
        raise ValueError(
            f"The table at {path} is missing column(s) {missing}; rebuild it with "
            f"'{rebuild}'."
        )
    return _bunch(
        frame,
        [c for c in frame.columns if c not in non_features],
        target="y",
        group="category",
        slm="slm_correct",
        llm="llm_correct",
        descr=descr,
        as_frame=as_frame,
        return_X_y=return_X_y,
        return_groups=return_groups,
    )


def _check_flags(
    caller: str, as_frame: Any, return_X_y: Any, return_groups: Any
) -> None:
    for name, value in (
        ("as_frame", as_frame),
        ("return_X_y", return_X_y),
        ("return_groups", return_groups),
    ):
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(
                f"The '{name}' parameter of {caller} must be a bool. "
                f"Got {value!r} instead."
            )
    if return_groups and not return_X_y:
        raise ValueError(
            f"The 'return_groups' parameter of {caller} only applies "
            "with return_X_y=True. Got return_groups=True and return_X_y=False "
            "instead (the Bunch always has 'groups')."
        )


def _bunch(
    frame: pd.DataFrame,
    feature_names: list[str],
    *,
    target: str,
    group: str,
    slm: str,
    llm: str,
    descr: str,
    as_frame: bool,
    return_X_y: bool,
    return_groups: bool,
) -> Any:
    X = frame[feature_names].astype(np.float64)
    y = frame[target].astype(np.int64).rename(target)
    groups = frame[group]
    slm_s = frame[slm].astype(bool)
    llm_s = frame[llm].astype(bool)
    if as_frame:
        data: Any = X
        tgt: Any = y
        grp: Any = groups
        slm_out: Any = slm_s
        llm_out: Any = llm_s
    else:
        data = X.to_numpy()
        tgt = y.to_numpy()
        grp = groups.to_numpy(dtype=object if groups.dtype == object else None)
        slm_out = slm_s.to_numpy()
        llm_out = llm_s.to_numpy()
    if return_X_y:
        return (data, tgt, grp) if return_groups else (data, tgt)
    return Bunch(
        data=data,
        target=tgt,
        groups=grp,
        feature_names=feature_names,
        target_names=["keep", "escalate"],
        slm_success=slm_out,
        llm_success=llm_out,
        frame=frame if as_frame else None,
        DESCR=descr,
    )


_TW_DIR = "textworld_tiny"
_TW_FILES = {
    "router": "textworld_tiny_router.parquet",
    "test": "textworld_tiny_test.parquet",
}
_TW_TARGETS = ("y_counterfactual", "y_verifier")


def load_textworld_tiny(
    *,
    subset: str = "router",
    target: str = "y_counterfactual",
    as_frame: bool = False,
    return_X_y: bool = False,
    return_groups: bool = False,
    data_home: str | os.PathLike[str] | None = None,
) -> Any:
    """Load the TextWorld trajectory-feature table made by ``make demo``.

    One row per step of the frozen tiny SLM (BC + DPO) rolled out on TextWorld
    games under seeded perturbations, with the 18 features of
    :data:`r2vcal.features.FEATURE_NAMES` and two labels: ``y_counterfactual``
    (the teacher's action at the step, then the SLM, succeeds while the SLM
    alone fails) and ``y_verifier`` (the R2V paper's verifier-comparison
    label). Groups are the perturbation seeds. See ``DATASHEET.md`` (also in
    ``DESCR``).

    Parameters
    ----------
    subset : {"router", "test"}, default="router"
        ``"router"``: rollouts on the games the routers are fitted on;
        ``"test"``: held-out games under held-out seeds.
    target : {"y_counterfactual", "y_verifier"}, default="y_counterfactual"
    as_frame, return_X_y, return_groups, data_home
        As in :func:`load_mmlu_pro_cascade`.

    Returns
    -------
    data : Bunch
        ``data`` (n, 18), ``target``, ``groups`` (seeds), ``feature_names``,
        ``slm_success`` / ``llm_success`` (the SLM-alone and teacher-at-t
        outcomes of each step), ``frame`` and ``DESCR``.

    Examples
    --------
    >>> from r2vcal.datasets import load_textworld_tiny
    >>> ds = load_textworld_tiny()
    >>> ds.data.shape[1], ds.feature_names[0]
    (18, 'entropy_mean')
    """
    return _load_textworld(
        "load_textworld_tiny",
        _TW_DIR,
        _TW_FILES,
        "python -m pipelines.demo --ship datasets/textworld_tiny",
        subset=subset,
        target=target,
        as_frame=as_frame,
        return_X_y=return_X_y,
        return_groups=return_groups,
        data_home=data_home,
    )


_TWR_DIR = "textworld_r2v"
_TWR_FILES = {
    "router": "textworld_r2v_router.parquet",
    "test": "textworld_r2v_test.parquet",
}


def load_textworld_r2v(
    *,
    subset: str = "router",
    target: str = "y_counterfactual",
    as_frame: bool = False,
    return_X_y: bool = False,
    return_groups: bool = False,
    data_home: str | os.PathLike[str] | None = None,
) -> Any:
    """Load the TextWorld router table built by ``make dataset-textworld``.

    One row per step of a frozen tiny SLM that **scores TextWorld's admissible
    commands** (:mod:`pipelines.scoring`) on held-out ``tw-simple`` games under
    five seeded perturbation seeds, with the 18 features of
    :data:`r2vcal.features.FEATURE_NAMES` and the labels ``y_counterfactual``
    (the teacher's action at the step, then the SLM, succeeds while the SLM
    alone fails; computed by replaying the seeded episode) and ``y_verifier``.
    Groups are the perturbation seeds. Larger than :func:`load_textworld_tiny`
    (the demo's table) and with a mid-strength SLM, so the counterfactual
    label has positives in many episodes. See ``DATASHEET.md`` (``DESCR``).

    Parameters
    ----------
    subset : {"router", "test"}, default="router"
        ``"router"``: validation games (the routers are fitted on them);
        ``"test"``: held-out test games under held-out seeds.
    target : {"y_counterfactual", "y_verifier"}, default="y_counterfactual"
    as_frame, return_X_y, return_groups, data_home
        As in :func:`load_mmlu_pro_cascade`.

    Returns
    -------
    data : Bunch
        ``data`` (n, 18), ``target``, ``groups`` (seeds), ``feature_names``,
        ``slm_success`` / ``llm_success``, ``frame`` and ``DESCR``.

    Examples
    --------
    >>> from r2vcal.datasets import load_textworld_r2v
    >>> ds = load_textworld_r2v()
    >>> ds.data.shape[1], len(set(ds.groups)) >= 5
    (18, True)
    """
    return _load_textworld(
        "load_textworld_r2v",
        _TWR_DIR,
        _TWR_FILES,
        "make dataset-textworld",
        subset=subset,
        target=target,
        as_frame=as_frame,
        return_X_y=return_X_y,
        return_groups=return_groups,
        data_home=data_home,
    )


def _read_shipped(
    dirname: str, filename: str, rebuild: str, data_home: Any
) -> tuple[pd.DataFrame, str]:
    """A shipped table and its datasheet text, or a FileNotFoundError saying
    where it was looked for and how to rebuild it."""
    folder = get_data_home(data_home) / dirname
    path = folder / filename
    if not path.is_file():
        raise FileNotFoundError(
            f"The {dirname} table was not found at {path}. Set R2VCAL_DATA "
            f"(or data_home) to the folder holding '{dirname}/', or rebuild "
            f"it with '{rebuild}'."
        )
    sheet = folder / "DATASHEET.md"
    descr = sheet.read_text(encoding="utf-8") if sheet.is_file() else ""
    return pd.read_parquet(path), descr


def _load_textworld(
    caller: str,
    dirname: str,
    files: dict[str, str],
    rebuild: str,
    *,
    subset: str,
    target: str,
    as_frame: bool,
    return_X_y: bool,
    return_groups: bool,
    data_home: Any,
) -> Any:
    """The shared body of the TextWorld loaders (same columns, groups = seeds)."""
    from r2vcal.features import FEATURE_NAMES

    _check_flags(caller, as_frame, return_X_y, return_groups)
    for name, value, allowed in (
        ("subset", subset, tuple(files)),
        ("target", target, _TW_TARGETS),
    ):
        if value not in allowed:
            raise ValueError(
                f"The '{name}' parameter of {caller} must be a str among "
                f"{set(allowed)}. Got {value!r} instead."
            )
    frame, descr = _read_shipped(dirname, files[subset], rebuild, data_home)
    return _bunch(
        frame,
        list(FEATURE_NAMES),
        target=target,
        group="seed",
        slm="slm_step_success",
        llm="llm_step_success",
        descr=descr,
        as_frame=as_frame,
        return_X_y=return_X_y,
        return_groups=return_groups,
    )
