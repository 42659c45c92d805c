"""Tests of the r2vcal command line (run in-process through ``main``)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from r2vcal import load_router
from r2vcal.cli import main


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    rng = np.random.default_rng(0)
    n = 3000
    seed = rng.integers(0, 6, size=n)
    entropy = rng.gamma(2.0, 0.5, size=n)
    verifier = rng.uniform(size=n)
    agreement = rng.uniform(size=n)
    z = 1.2 * entropy - 2.0 * verifier - 1.5 * agreement + 0.3 * (seed < 2)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    df = pd.DataFrame(
        {
            "entropy_mean": entropy,
            "verifier_max": verifier,
            "agreement": agreement,
            "seed": seed,
            "y_counterfactual": y,
        }
    )
    path = tmp_path_factory.mktemp("data") / "steps.parquet"
    df.to_parquet(path)
    df.to_csv(path.with_suffix(".csv"), index=False)
    return path


def test_fit_writes_router_and_report(table, tmp_path, capsys):
    code = main(
        [
            "fit",
            str(table),
            "--target",
            "y_counterfactual",
            "--groups",
            "seed",
            "--out",
            str(tmp_path),
            "--n-resamples",
            "20",
        ]
    )
    assert code == 0
    router = load_router(tmp_path / "router")
    assert list(router.feature_names_in_) == [
        "entropy_mean",
        "verifier_max",
        "agreement",
    ]
    rep = tmp_path / "report"
    for name in (
        "metrics.json",
        "report.md",
        "report.html",
        "frontier.png",
        "reliability.png",
        "groups.png",
        "comparison.csv",
        "groups.csv",
    ):
        assert (rep / name).is_file(), name
    metrics = json.loads((rep / "metrics.json").read_text())
    routers = {row["router"] for row in metrics["comparison"]}
    assert routers == {"CVaRBrierRouter", "logistic", "entropy", "verifier", "random"}
    # the table has no episode/task column: whole seeds are held out
    assert any("held out by 'seed'" in n for n in metrics["notes"])
    assert 0 <= metrics["escalation_rate_at_threshold"] <= 1
    assert "| CVaRBrierRouter" in (rep / "report.md").read_text()


def test_report_on_csv(table, tmp_path):
    opts = ["--target", "y_counterfactual", "--groups", "seed", "--n-resamples", "20"]
    assert main(["fit", str(table), *opts, "--out", str(tmp_path / "fit")]) == 0
    router, csv = str(tmp_path / "fit" / "router"), str(table.with_suffix(".csv"))
    code = main(["report", router, csv, *opts, "--out", str(tmp_path / "rep")])
    assert code == 0
    assert (tmp_path / "rep" / "report.md").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["fit", "missing.parquet", "--target", "y", "--out", "x"], "table not found"),
        (
            ["fit", "{table}", "--target", "nope", "--out", "{out}"],
            "--target column 'nope'",
        ),
        (
            [
                "fit",
                "{table}",
                "--target",
                "y_counterfactual",
                "--groups",
                "zzz",
                "--out",
                "{out}",
            ],
            "--groups column 'zzz'",
        ),
        (
            ["fit", "{table}", "--target", "entropy_mean", "--out", "{out}"],
            "0/1 labels",
        ),
        (
            [
                "report",
                "{out}/none",
                "{table}",
                "--target",
                "y_counterfactual",
                "--out",
                "{out}",
            ],
            "No saved router",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(table, tmp_path, capsys, args, message):
    argv = [a.format(table=table, out=tmp_path) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]


def test_fit_reads_a_jsonl_decision_log(table, tmp_path):
    log = tmp_path / "decisions.jsonl"
    pd.read_parquet(table).to_json(log, orient="records", lines=True)
    argv = ["fit", str(log), "--target", "y_counterfactual", "--groups", "seed"]
    assert main([*argv, "--n-resamples", "10", "--out", str(tmp_path / "f")]) == 0
    assert (tmp_path / "f" / "router" / "router.json").is_file()


_SERVE = ["--slm-model", "s", "--llm-model", "l"]


@pytest.fixture(scope="module")
def saved_router(tmp_path_factory):
    from r2vcal import CVaRBrierRouter, save_router
    from r2vcal.features import FEATURE_NAMES

    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(200, len(FEATURE_NAMES))), columns=FEATURE_NAMES)
    router = CVaRBrierRouter(calibration=None, random_state=0)
    router.fit(X, X["entropy_mean"] > 0)
    return save_router(router, tmp_path_factory.mktemp("serve") / "router")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--router", "{out}/none", "--slm-base-url", "http://a/v1"],
            "router folder not found",
        ),
        (["--router", "{router}", "--slm-base-url", "a:8000"], "'base_url' parameter"),
        (
            ["--router", "{router}", "--slm-base-url", "http://a/v1", "--k", "0"],
            "'k' parameter",
        ),
        (
            ["--router", "{router}", "--slm-base-url", "http://a/v1", "--paced"],
            "--paced needs --budget",
        ),
        (
            ["--router", "{router}", "--slm-base-url", "http://a/v1", "--log", "x.txt"],
            ".jsonl or .parquet",
        ),
    ],
)
def test_serve_bad_input_is_one_line_and_exit_2(table, tmp_path, capsys, args, message):
    pytest.importorskip("fastapi")
    router = tmp_path / "fit" / "router"
    if not router.exists():
        argv = ["fit", str(table), "--target", "y_counterfactual", "--groups", "seed"]
        main([*argv, "--n-resamples", "10", "--out", str(tmp_path / "fit")])
    capsys.readouterr()
    argv = [a.format(out=tmp_path, router=router) for a in args]
    assert main(["serve", *argv, *_SERVE, "--llm-base-url", "http://b/v1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]


def _serve_log(n_conv: int, seed: int = 0) -> pd.DataFrame:
    """A decision log of `r2vcal serve`: most conversations have one step."""
    rng = np.random.default_rng(seed)
    steps = np.where(rng.random(n_conv) < 0.7, 1, rng.integers(2, 6, size=n_conv))
    conv = np.repeat([f"conv-{k}" for k in range(n_conv)], steps)
    n = conv.size
    entropy = rng.gamma(2.0, 0.5, size=n)
    agree = np.where(rng.random(n) < 0.6, 1.0, rng.integers(1, 5, size=n) / 5)
    y = (rng.random(n) < 1 / (1 + np.exp(-(entropy - 2 * agree)))).astype(int)
    return pd.DataFrame(
        {
            "episode_id": conv,
            "step": np.concatenate([np.arange(k) for k in steps]),
            "entropy_mean": entropy,
            "agreement": agree,
            "group": rng.integers(0, 3, size=n),
            "y": y,
        }
    )


def test_fit_on_a_serve_log_holds_out_whole_conversations(tmp_path):
    from r2vcal.cli import _holdout

    df = _serve_log(600)
    y = df["y"].to_numpy()
    train, test = _holdout(df, y, "episode_id", 0.3, 0)
    assert not set(df.episode_id.iloc[train]) & set(df.episode_id.iloc[test])
    assert len(train) + len(test) == len(df)
    log = tmp_path / "log.jsonl"
    df.to_json(log, orient="records", lines=True)
    argv = ["fit", str(log), "--target", "y", "--groups", "group"]
    assert main([*argv, "--n-resamples", "10", "--out", str(tmp_path / "f")]) == 0
    notes = json.loads((tmp_path / "f" / "report" / "metrics.json").read_text())
    assert any("held out by 'episode_id'" in n for n in notes["notes"])


def test_fit_out_is_checked_before_fitting(table, tmp_path, capsys):
    existing = tmp_path / "file.txt"
    existing.write_text("precious")
    argv = ["fit", str(table), "--target", "y_counterfactual", "--out", str(existing)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "is not a folder" in err and "fitting routers" not in err
    assert existing.read_text() == "precious"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda d: d.assign(agreement=d.agreement.where(d.index % 7 > 0)),
            "'agreement' has 429 of 3,000 rows",
        ),
        (lambda d: d.assign(agreement=d.agreement * 1e300), "beyond +-1e150"),
        (lambda d: d.assign(y_counterfactual=0), "one class only"),
        (
            lambda d: d.assign(seed=d.seed.where(d.index > 5)),
            "--groups column 'seed' has 6 missing",
        ),
    ],
)
def test_bad_values_are_named_up_front(table, tmp_path, capsys, mutate, message):
    path = tmp_path / "bad.parquet"
    mutate(pd.read_parquet(table)).to_parquet(path)
    argv = ["fit", str(path), "--target", "y_counterfactual", "--groups", "seed"]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_rare_groups_warn_instead_of_crashing(table, tmp_path):
    df = pd.read_parquet(table)
    df.loc[0, "seed"] = 99  # one group with a single row
    df["task_id"] = np.arange(len(df)) % 300
    path = tmp_path / "rare.parquet"
    df.to_parquet(path)
    argv = ["fit", str(path), "--target", "y_counterfactual", "--groups", "seed"]
    with pytest.warns(UserWarning, match="fewer than 10 training rows"):
        code = main([*argv, "--n-resamples", "10", "--out", str(tmp_path / "o")])
    assert code == 0


def test_report_warns_when_the_router_loses_to_logistic_regression(table, tmp_path):
    from r2vcal import CVaRBrierRouter, save_router

    df = pd.read_parquet(table)
    feats = ["entropy_mean", "verifier_max", "agreement"]
    bad = CVaRBrierRouter(calibration=None).fit(  # learned the inverted label
        df[feats], 1 - df.y_counterfactual, groups=df.seed
    )
    save_router(bad, tmp_path / "bad")
    argv = ["report", str(tmp_path / "bad"), str(table), "--target", "y_counterfactual"]
    argv += ["--groups", "seed", "--n-resamples", "20"]
    assert main([*argv, "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    head = md.split("## Comparison")[0]
    assert "worse than logistic (cross-fitted here)" in head
    assert "worse than the constant base-rate forecast" in head


def test_report_on_one_class_says_not_available(table, tmp_path):
    df = pd.read_parquet(table)
    argv = ["fit", str(table), "--target", "y_counterfactual", "--groups", "seed"]
    assert main([*argv, "--n-resamples", "10", "--out", str(tmp_path / "f")]) == 0
    one = tmp_path / "one.parquet"
    df[df.y_counterfactual == 0].to_parquet(one)
    argv = ["report", str(tmp_path / "f" / "router"), str(one)]
    argv += ["--target", "y_counterfactual", "--n-resamples", "10"]
    assert main([*argv, "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "n/a (one class)" in md and "one class only" in md


def test_serve_router_on_other_columns_is_one_line(tmp_path, capsys, monkeypatch):
    pytest.importorskip("fastapi")
    import r2vcal.serve
    from r2vcal import CVaRBrierRouter, save_router

    def never(*args, **kwargs):  # the check must fail before a server starts
        raise AssertionError("run_server reached")

    monkeypatch.setattr(r2vcal.serve, "run_server", never)
    rng = np.random.default_rng(0)
    X = pd.DataFrame(
        {"foo": rng.normal(size=200), "entropy_mean": rng.normal(size=200)}
    )
    router = CVaRBrierRouter(calibration=None).fit(X, X["foo"] > 0)
    save_router(router, tmp_path / "r")
    argv = ["serve", "--router", str(tmp_path / "r"), *_SERVE]
    argv += ["--slm-base-url", "http://a/v1", "--llm-base-url", "http://b/v1"]
    assert main(argv) == 2  # 'foo' is not a feature serve computes
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
