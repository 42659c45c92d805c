"""The ``r2vcal`` command line.

::

    r2vcal fit TABLE --target COL --groups COL [--split-by COL] [--features ...]
               --out DIR
    r2vcal report ROUTER TABLE --target COL [--groups COL] --out DIR
    r2vcal demo [--out DIR]
    r2vcal serve --router DIR --slm-base-url URL --slm-model NAME \
                 --llm-base-url URL --llm-model NAME [--budget N] [--port 8000]

``fit`` reads a Parquet, CSV or JSONL table, holds out whole episodes (or tasks,
conversations, groups: ``--split-by``), fits :class:`~r2vcal.CVaRBrierRouter`,
plain logistic regression (:class:`~r2vcal.LogisticRouter`, the yardstick) and
the baselines on the rest, saves the router (``DIR/router``, pickle-free) and
writes a report on the held-out rows (``DIR/report``). ``report`` evaluates a
saved router on a table, beside a logistic regression cross-fitted on that table. ``demo`` runs
``fit`` on the shipped MMLU-Pro cascade table. ``serve`` runs the OpenAI-compatible
proxy of :mod:`r2vcal.serve` (extra ``serve``). Bad paths or columns print one
line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["main"]


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


def _read_table(path: str) -> pd.DataFrame:
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"table not found: {path}")
    suffix = p.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(p)
        if suffix in (".csv", ".gz", ".tsv"):
            return pd.read_csv(p, sep="\t" if suffix == ".tsv" else ",")
        if suffix == ".jsonl":  # e.g. the decision log of `r2vcal serve`
            return pd.read_json(p, lines=True)
    except Exception as exc:  # pyarrow/pandas raise many types for bad files
        raise CLIError(f"could not read {path}: {exc}") from None
    raise CLIError(
        f"{path}: expected a .parquet, .csv or .jsonl file, got {suffix or 'none'}"
    )


#: Columns that identify a unit to hold out whole, most conservative first: steps
#: of one task (or episode, or conversation) are correlated, so they must all
#: land on one side of the train/test split.
SPLIT_COLUMNS: tuple[str, ...] = ("task_id", "episode_id", "conversation_id")


def _check_out(out: Path) -> None:
    """Fail before fitting when ``--out`` cannot be a folder."""
    for parent in (out, *out.parents):
        if parent.exists():
            if not parent.is_dir():
                raise CLIError(
                    f"--out {out}: {parent} exists and is not a folder; pass a "
                    "folder path (it is created if missing)"
                )
            break


def _check_values(
    df: pd.DataFrame,
    target: str,
    groups: str | None,
    features: Sequence[str],
    both_classes: bool = True,
) -> None:
    """Finite numeric features, a 0/1 target and complete groups, or one line."""
    n = len(df)
    if n == 0:
        raise CLIError("the table has no rows")
    for col in features:
        if not pd.api.types.is_numeric_dtype(
            df[col]
        ) and not pd.api.types.is_bool_dtype(df[col]):
            raise CLIError(
                f"feature column {col!r} is not numeric (dtype {df[col].dtype}); "
                "drop it from --features or encode it"
            )
        values = df[col].to_numpy(dtype=np.float64, na_value=np.nan)
        with np.errstate(over="ignore"):
            bad = ~np.isfinite(values) | (np.abs(values) > 1e150)
        if bad.any():
            raise CLIError(
                f"feature column {col!r} has {int(bad.sum()):,} of {n:,} rows that "
                "are NaN, infinite or beyond +-1e150 (first at row "
                f"{int(np.flatnonzero(bad)[0])}); drop or impute them"
            )
    y = df[target]
    if y.isna().any():
        raise CLIError(
            f"--target column {target!r} has {int(y.isna().sum()):,} missing "
            f"labels of {n:,} rows; drop those rows"
        )
    if not np.isin(pd.unique(y), [0, 1, True, False]).all():
        raise CLIError(f"--target column {target!r} must hold 0/1 labels")
    if both_classes and pd.unique(y).size < 2:
        raise CLIError(
            f"--target column {target!r} holds one class only ({y.iloc[0]!r}); a "
            "router needs steps that needed escalation and steps that did not"
        )
    if groups is not None and df[groups].isna().any():
        raise CLIError(
            f"--groups column {groups!r} has {int(df[groups].isna().sum()):,} "
            "missing values; fill them (e.g. with 'unknown') or drop the rows"
        )


def _split_column(
    df: pd.DataFrame, split_by: str | None, groups: str | None
) -> str | None:
    """``--split-by``, else the first of :data:`SPLIT_COLUMNS` present, else groups."""
    if split_by is not None:
        if split_by not in df.columns:
            raise CLIError(
                f"--split-by column {split_by!r} is not in the table (columns: "
                f"{', '.join(map(str, df.columns[:25]))})"
            )
        return split_by
    for col in SPLIT_COLUMNS:
        if col in df.columns:
            return col
    return groups


def _holdout(
    df: pd.DataFrame,
    y: np.ndarray,
    split_col: str | None,
    test_size: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Train/test rows with whole ``split_col`` units on one side, both classes
    on both sides."""
    from sklearn.model_selection import GroupShuffleSplit, train_test_split

    idx = np.arange(len(df))
    if split_col is None:
        counts = np.bincount(y.astype(np.intp), minlength=2)
        strat = y if counts.min() >= 2 else None
        train, test = train_test_split(
            idx, test_size=test_size, random_state=seed, stratify=strat
        )
        return np.sort(train), np.sort(test)
    units = df[split_col].astype(str).to_numpy()
    n_units = np.unique(units).size
    if n_units < 2:
        raise CLIError(
            f"--split-by column {split_col!r} has a single value; whole "
            f"{split_col} units are held out, so it needs at least 2 (pass "
            "--split-by with another column)"
        )
    splitter = GroupShuffleSplit(n_splits=50, test_size=test_size, random_state=seed)
    for train, test in splitter.split(idx, y, groups=units):
        if np.unique(y[train]).size == 2 and np.unique(y[test]).size == 2:
            return train, test
    raise CLIError(
        f"no hold-out of whole {split_col!r} units ({n_units:,} of them) keeps "
        "both label classes on both sides in 50 tries; positives are too "
        "concentrated: add data or pass --split-by with a finer column"
    )


def _columns(
    df: pd.DataFrame, target: str, groups: str | None, features: Sequence[str] | None
) -> list[str]:
    for name, col in (("--target", target), ("--groups", groups)):
        if col is not None and col not in df.columns:
            raise CLIError(
                f"{name} column {col!r} is not in the table (columns: "
                f"{', '.join(map(str, df.columns[:25]))})"
            )
    if features:
        missing = [f for f in features if f not in df.columns]
        if missing:
            raise CLIError(f"--features not in the table: {', '.join(missing)}")
        return list(features)
    from r2vcal.features import FEATURE_NAMES

    known = [c for c in FEATURE_NAMES if c in df.columns]
    if known:
        return known
    # never features: the label, groups, identifiers and outcome columns
    skip = {target, groups, "y", "step", "seed", *SPLIT_COLUMNS}
    numeric = [
        c
        for c in df.columns
        if c not in skip
        and pd.api.types.is_numeric_dtype(df[c])
        and not pd.api.types.is_bool_dtype(df[c])
        and not str(c).endswith("_id")
        and not str(c).startswith(("y_", "slm_", "llm_", "teacher_"))
    ]
    if not numeric:
        raise CLIError("no numeric feature columns found; pass --features")
    return numeric


def _baselines(features: list[str], costs: dict[str, Any]) -> dict[str, Any]:
    from r2vcal.baselines import (
        EntropyRouter,
        LogisticRouter,
        RandomRouter,
        VerifierRouter,
    )

    out: dict[str, Any] = {"logistic": LogisticRouter(**costs)}
    if "entropy_mean" in features:
        out["entropy"] = EntropyRouter("entropy_mean", **costs)
    if "verifier_max" in features:
        out["verifier"] = VerifierRouter("verifier_max", **costs)
    out["random"] = RandomRouter(0.25, random_state=0)
    return out


def _fit_and_report(
    df: pd.DataFrame,
    *,
    target: str,
    groups: str | None,
    features: list[str],
    out: Path,
    split_by: str | None = None,
    group_label: str | None = None,
    router_kwargs: dict[str, Any],
    costs: dict[str, Any],
    test_size: float,
    slm_col: str | None,
    llm_col: str | None,
    extra_baselines: dict[str, str] | None = None,
    title: str,
    notes: list[str],
    n_resamples: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    import warnings

    from tqdm.auto import tqdm

    from r2vcal import CVaRBrierRouter, save_router
    from r2vcal.baselines import EntropyRouter
    from r2vcal.report import write_report

    _check_values(df, target, groups, features)
    y = df[target].to_numpy().astype(np.int64)
    split_col = _split_column(df, split_by, groups)
    train, test = _holdout(df, y, split_col, test_size, seed)
    X = df[features].astype(np.float64)
    if groups is not None:
        sizes = df[groups].iloc[train].value_counts()
        small = sizes[sizes < 10]
        if len(small):
            warnings.warn(
                f"{len(small)} of {len(sizes)} groups in --groups {groups!r} have "
                f"fewer than 10 training rows (e.g. {small.index[0]!r}: "
                f"{int(small.iloc[0])}); their Brier is noisy and the CVaR over "
                "groups follows that noise. Consider coarser groups.",
                UserWarning,
                stacklevel=2,
            )
    g = df[groups].to_numpy() if groups else None
    routers: dict[str, Any] = {
        "CVaRBrierRouter": CVaRBrierRouter(random_state=seed, **router_kwargs, **costs)
    }
    for name, col in (extra_baselines or {}).items():
        routers[name] = EntropyRouter(col, **costs)
    routers.update(_baselines(features, costs))
    timings: dict[str, float] = {}
    for name, router in tqdm(
        list(routers.items()), desc="fitting routers", unit="router"
    ):
        t0 = time.perf_counter()
        router.fit(X.iloc[train], y[train], groups=None if g is None else g[train])
        timings[name] = time.perf_counter() - t0
    save_router(routers["CVaRBrierRouter"], out / "router")
    held = (
        f"held out by {split_col!r}: {df[split_col].iloc[test].nunique():,} of "
        f"{df[split_col].nunique():,} units"
        if split_col
        else "held out by row (no episode/task/group column)"
    )
    notes = [
        *notes,
        f"train rows {len(train):,}, held-out rows {len(test):,}; {held}",
        f"features ({len(features)}): {', '.join(features)}",
        "fit seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in timings.items()),
    ]
    print("writing report (bootstrap CIs) ...", file=sys.stderr)
    reference = (
        "entropy" if "entropy" in routers else next(iter(extra_baselines or {}), None)
    )
    write_report(
        out / "report",
        routers,
        X.iloc[test],
        y[test],
        groups=None if g is None else g[test],
        slm_success=None if slm_col is None else df[slm_col].to_numpy()[test],
        llm_success=None if llm_col is None else df[llm_col].to_numpy()[test],
        reference=reference,
        cost_slm=costs["cost_slm"],
        cost_llm=costs["cost_llm"],
        title=title,
        notes=notes,
        n_resamples=n_resamples,
        group_label=group_label or (groups or "group"),
    )
    return routers


def _add_router_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cvar-weight", type=float, default=1.0)
    p.add_argument("--cvar-tail", type=float, default=0.2)
    p.add_argument(
        "--calibration",
        choices=["temperature", "isotonic", "none"],
        default="temperature",
    )
    p.add_argument(
        "--hidden",
        type=int,
        nargs="*",
        default=[],
        help="hidden layer sizes (MLP backend); none = linear",
    )
    p.add_argument("--cost-slm", type=float, default=1.0)
    p.add_argument("--cost-llm", type=float, default=10.0)
    p.add_argument("--miss-cost", type=float, default=20.0)
    p.add_argument("--test-size", type=float, default=0.3)
    p.add_argument(
        "--n-resamples",
        type=int,
        default=200,
        help="bootstrap resamples for the report's CIs",
    )


def _router_kwargs(a: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    kwargs = {
        "cvar_weight": a.cvar_weight,
        "cvar_tail": a.cvar_tail,
        "calibration": None if a.calibration == "none" else a.calibration,
        "hidden_layer_sizes": tuple(a.hidden),
    }
    costs = {"cost_slm": a.cost_slm, "cost_llm": a.cost_llm, "miss_cost": a.miss_cost}
    return kwargs, costs


def _cmd_fit(a: argparse.Namespace) -> int:
    out = Path(a.out)
    _check_out(out)
    df = _read_table(a.table)
    features = _columns(df, a.target, a.groups, a.features)
    kwargs, costs = _router_kwargs(a)
    _fit_and_report(
        df,
        target=a.target,
        groups=a.groups,
        features=features,
        out=out,
        split_by=a.split_by,
        router_kwargs=kwargs,
        costs=costs,
        test_size=a.test_size,
        n_resamples=a.n_resamples,
        slm_col=a.slm_success,
        llm_col=a.llm_success,
        title=f"r2vcal fit {Path(a.table).name}",
        notes=[f"table: {a.table}", f"target: {a.target}, groups: {a.groups}"],
    )
    print(f"router: {out / 'router'}\nreport: {out / 'report' / 'report.md'}")
    return 0


def _cmd_report(a: argparse.Namespace) -> int:
    from r2vcal import load_router
    from r2vcal.report import write_report

    try:
        router = load_router(a.router)
    except FileNotFoundError as exc:
        raise CLIError(str(exc)) from None
    df = _read_table(a.table)
    names = getattr(router, "feature_names_in_", None)
    if names is None:
        raise CLIError("the saved router has no feature names; refit it on a table")
    features = _columns(df, a.target, a.groups, [str(n) for n in names])
    _check_out(Path(a.out))
    # one class is fine for evaluation: the report says what is undefined
    _check_values(df, a.target, a.groups, features, both_classes=False)
    X = df[features].astype(np.float64)
    y = df[a.target].to_numpy().astype(np.int64)
    routers: dict[str, Any] = {"router": router}
    notes = [f"router: {a.router}", f"table: {a.table}"]
    lr = _cross_fitted_logistic(df, X, y, _split_column(df, a.split_by, a.groups))
    if isinstance(lr, str):
        notes.append(f"no logistic-regression yardstick: {lr}")
    else:
        routers["logistic (cross-fitted here)"] = lr
        notes.append(
            "logistic (cross-fitted here): LogisticRegression on the router's "
            "features, 5-fold cross-fitted on this table by whole units of the "
            "split column (it saw 80 % of this table; the router saw none)"
        )
    write_report(
        Path(a.out),
        routers,
        X,
        y,
        groups=None if a.groups is None else df[a.groups].to_numpy(),
        group_label=a.groups or "group",
        title=f"r2vcal report {Path(a.table).name}",
        notes=notes,
        cost_slm=float(getattr(router, "cost_slm", 1.0)),
        cost_llm=float(getattr(router, "cost_llm", 10.0)),
        n_resamples=a.n_resamples,
    )
    print(f"report: {Path(a.out) / 'report.md'}")
    return 0


def _cross_fitted_logistic(
    df: pd.DataFrame, X: pd.DataFrame, y: np.ndarray, split_col: str | None
) -> np.ndarray | str:
    """Out-of-fold LogisticRouter probabilities on ``X``, or why there are none."""
    from sklearn.model_selection import GroupKFold, StratifiedKFold, cross_val_predict

    from r2vcal.baselines import LogisticRouter

    if np.unique(y).size < 2:
        return "the table holds one class"
    if split_col is None:
        if np.bincount(y, minlength=2).min() < 5:
            return "fewer than 5 rows of a class"
        cv: Any = StratifiedKFold(5, shuffle=True, random_state=0)
        units = None
    else:
        units = df[split_col].astype(str).to_numpy()
        if np.unique(units).size < 5:
            return f"fewer than 5 {split_col!r} units to cross-fit over"
        cv = GroupKFold(5)
    try:
        proba = cross_val_predict(
            LogisticRouter(), X, y, groups=units, cv=cv, method="predict_proba"
        )
    except ValueError as exc:  # a fold with one class
        return str(exc).splitlines()[0]
    return np.asarray(proba[:, 1])


def _cmd_demo(a: argparse.Namespace) -> int:
    from r2vcal.datasets import load_mmlu_pro_cascade

    out = Path(a.out)
    _check_out(out)
    data = load_mmlu_pro_cascade(as_frame=True)
    df = data.frame
    print(
        f"demo: MMLU-Pro cascade, {len(df):,} questions, small model "
        "Llama-3.1-8B-Instruct -> big model Llama-3.1-70B-Instruct; groups = the "
        "14 subject categories",
        file=sys.stderr,
    )
    kwargs, costs = _router_kwargs(a)
    features = list(data.feature_names)
    routers = _fit_and_report(
        df,
        target="y",
        groups="category",
        features=features,
        out=out,
        split_by="question_id",  # one row per question: a row split
        group_label="category",
        router_kwargs=kwargs,
        costs=costs,
        test_size=a.test_size,
        n_resamples=a.n_resamples,
        slm_col="slm_correct",
        llm_col="llm_correct",
        extra_baselines={"length": "log_n_chars"},
        title="r2vcal demo: MMLU-Pro small->big model cascade",
        notes=[
            "data: datasets/mmlu_pro_cascade (TIGER-AI-Lab MMLU-Pro eval results, "
            "Apache-2.0)",
            "label y = 1 when the small model is wrong and the big one right",
        ],
    )
    r = routers["CVaRBrierRouter"]
    print(
        f"CVaRBrierRouter: threshold {r.threshold_:.3f}, temperature "
        f"{r.temperature_:.3f}, CVaR of per-category Brier {r.cvar_:.4f}"
    )
    print((out / "report" / "report.md").read_text().split("## Reliability-cost")[0])
    print(f"report: {out / 'report' / 'report.html'}")
    return 0


def _cmd_serve(a: argparse.Namespace) -> int:
    import os

    from r2vcal import load_router
    from r2vcal.cascade import PacedBudget

    try:
        from r2vcal.serve import Upstream, create_app, run_server
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise CLIError(str(exc)) from None
    if not Path(a.router).is_dir():
        raise CLIError(f"router folder not found: {a.router} (written by `r2vcal fit`)")
    router = load_router(a.router)
    retry = {"timeout": a.timeout, "max_retries": a.retries, "backoff": a.backoff}
    slm = Upstream(
        a.slm_base_url,
        a.slm_model,
        api_key=a.slm_api_key or os.environ.get("R2VCAL_SLM_API_KEY"),
        **retry,
    )
    llm = Upstream(
        a.llm_base_url,
        a.llm_model,
        api_key=a.llm_api_key or os.environ.get("R2VCAL_LLM_API_KEY"),
        **retry,
    )
    budget: Any = a.budget
    if a.paced and a.budget is None:
        raise CLIError("--paced needs --budget N")
    if a.paced:
        budget = PacedBudget(a.budget)
    try:
        app = create_app(
            router,
            slm=slm,
            llm=llm,
            verifier=a.verifier,
            k=a.k,
            threshold=a.threshold,
            budget=budget,
            horizon=a.horizon,
            top_logprobs=a.top_logprobs,
            log_path=a.log,
            served_model_name=a.served_model_name,
            max_connections=a.max_connections,
            max_conversations=a.max_conversations,
            retry_window=a.retry_window,
            api_key=a.api_key or os.environ.get("R2VCAL_API_KEY"),
            state_path=a.state,
        )
    except (TypeError, ValueError) as exc:  # e.g. a router fitted on other columns
        raise CLIError(str(exc).splitlines()[0] if str(exc) else repr(exc)) from None
    print(
        f"r2vcal serve: http://{a.host}:{a.port}/v1 -> SLM {a.slm_model} "
        f"({a.slm_base_url}), LLM {a.llm_model} ({a.llm_base_url}), k={a.k}, "
        f"threshold {app.state.cascade.threshold:.3f}, budget {a.budget}",
        file=sys.stderr,
    )
    run_server(app, host=a.host, port=a.port, log_level=a.log_level)
    return 0


def make_parser() -> argparse.ArgumentParser:
    """The ``r2vcal`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="r2vcal", description="Calibrated step-level SLM->LLM escalation."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fit", help="fit a router on a table and write a report")
    p.add_argument("table", help="Parquet or CSV trajectory-feature table")
    p.add_argument("--target", required=True, help="0/1 label column")
    p.add_argument("--groups", help="group (perturbation seed) column")
    p.add_argument(
        "--split-by",
        help="hold out whole units of this column (default: task_id, episode_id "
        "or conversation_id when present, else --groups)",
    )
    p.add_argument("--features", nargs="*", help="feature columns (default: known)")
    p.add_argument("--slm-success", help="0/1 column: the SLM's step succeeded")
    p.add_argument("--llm-success", help="0/1 column: the LLM's step succeeded")
    p.add_argument("--out", required=True, help="output folder")
    _add_router_args(p)
    p.set_defaults(func=_cmd_fit)

    p = sub.add_parser("report", help="evaluate a saved router on a table")
    p.add_argument("router", help="folder written by `r2vcal fit` (DIR/router)")
    p.add_argument("table")
    p.add_argument("--target", required=True)
    p.add_argument("--groups")
    p.add_argument(
        "--split-by",
        help="units for cross-fitting the logistic yardstick (default as in fit)",
    )
    p.add_argument("--out", required=True)
    p.add_argument("--n-resamples", type=int, default=200)
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("demo", help="fit and report on the shipped MMLU-Pro table")
    p.add_argument("--out", default="runs/demo")
    _add_router_args(p)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "serve", help="OpenAI-compatible proxy with step-level escalation"
    )
    p.add_argument("--router", required=True, help="folder written by `r2vcal fit`")
    p.add_argument("--slm-base-url", required=True, help="e.g. http://host:8001/v1")
    p.add_argument("--slm-model", required=True)
    p.add_argument("--llm-base-url", required=True)
    p.add_argument("--llm-model", required=True)
    p.add_argument("--slm-api-key", help="default: $R2VCAL_SLM_API_KEY")
    p.add_argument("--llm-api-key", help="default: $R2VCAL_LLM_API_KEY")
    p.add_argument("--verifier", help="verifier URL or module:callable (default: none)")
    p.add_argument("--k", type=int, default=5, help="SLM candidates per step")
    p.add_argument("--threshold", type=float, help="default: the router's threshold_")
    p.add_argument("--budget", type=int, help="LLM calls per conversation")
    p.add_argument("--paced", action="store_true", help="pace the budget (PacedBudget)")
    p.add_argument("--horizon", type=int, default=50, help="steps per conversation")
    p.add_argument("--top-logprobs", type=int, default=5)
    p.add_argument("--log", help="decision log (.jsonl or .parquet)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per attempt")
    p.add_argument("--retries", type=int, default=2)
    p.add_argument("--backoff", type=float, default=0.25)
    p.add_argument("--max-connections", type=int, default=64)
    p.add_argument("--served-model-name", default="r2vcal")
    p.add_argument(
        "--api-key",
        help="inbound key clients must send as a bearer token (default: "
        "$R2VCAL_API_KEY; required in practice when --host is not loopback)",
    )
    p.add_argument(
        "--max-conversations",
        type=int,
        default=10_000,
        help="conversations kept (least recently used dropped first)",
    )
    p.add_argument(
        "--retry-window",
        type=float,
        default=30.0,
        help="seconds within which a repeated request counts as a retry",
    )
    p.add_argument(
        "--state", help="SQLite file keeping budgets and conversations across restarts"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
    )
    p.set_defaults(func=_cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``r2vcal`` command; returns the exit status."""
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (CLIError, FileNotFoundError) as exc:
        print(f"r2vcal {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # validation errors from the library: one line
        print(f"r2vcal {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
