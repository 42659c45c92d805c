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
    assert routers == {"CVaRBrierRouter", "entropy", "verifier", "random"}
    assert "| CVaRBrierRouter" in (rep / "report.md").read_text()


def test_report_on_csv(table, tmp_path):
    assert (
        main(
            [
                "fit",
                str(table),
                "--target",
                "y_counterfactual",
                "--groups",
                "seed",
                "--out",
                str(tmp_path / "fit"),
            ]
        )
        == 0
    )
    code = main(
        [
            "report",
            str(tmp_path / "fit" / "router"),
            str(table.with_suffix(".csv")),
            "--target",
            "y_counterfactual",
            "--groups",
            "seed",
            "--out",
            str(tmp_path / "rep"),
        ]
    )
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
