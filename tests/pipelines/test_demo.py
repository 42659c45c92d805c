"""The demo's index page (pipelines.demo.report_doc) from a finished run's files."""

from __future__ import annotations

import re

import pandas as pd

from pipelines.demo import report_doc


def _summary() -> dict:
    share = {"cvar_brier": 0.4, "entropy": 0.8}
    return {
        "seconds": {"chain": 1.0, "evaluate": 2.0, "total": 3.0},
        "chain": {"seconds": {"bc": 0.5}, "success": {}},
        "shipped_table": None,
        "evaluate": {
            "headline": {
                "teacher_only_success": 1.0,
                "slm_only_success": 0.5,
                "target_success": 0.98,
                "share_at_target": share,
                "cvar_over_entropy_share": 0.5,
                "at_entropy_best": {
                    "success": 1.0,
                    "share": {**share, "random": float("nan")},
                    "cvar_over_entropy_share": 0.5,
                },
            }
        },
    }


def _arms() -> pd.DataFrame:
    rows = []
    for router, rate, success, share in [
        ("teacher_only", None, 1.0, 1.0),
        ("cvar_brier", 0.4, 0.99, 0.4),
        ("entropy", 0.8, 0.9, 0.8),
    ]:
        rows.append(
            {
                "router": router,
                "threshold_rate": rate,
                "success": success,
                "success_low": success - 0.05,
                "success_high": success,
                "llm_share": share,
                "llm_share_low": share - 0.1,
                "llm_share_high": share,
            }
        )
    return pd.DataFrame(rows)


def test_index_opens_with_the_headline_and_shows_only_existing_images(
    tmp_path,
) -> None:
    (tmp_path / "evaluate").mkdir()
    _arms().to_csv(tmp_path / "evaluate" / "closed_loop.csv", index=False)
    (tmp_path / "evaluate" / "frontier.png").write_bytes(b"png")
    md, page = report_doc(tmp_path, _summary()).write(tmp_path)
    html = page.read_text()
    body = html[html.index("<body>") :]
    assert body.index("Headline") < body.index("<table") < body.index("Chain")
    assert re.search(r"<tr class='hl'>\s*<td>cvar_brier</td>\s*<td>0.40</td>", html)
    assert html.count("<tr class='hl'>") == 1
    assert "<td>never</td>" in html  # entropy never reaches 0.98
    assert "evaluate/frontier.png" in html
    assert "mixed_reliability.png" not in html
    assert "offline/reliability.png" not in html
    text = md.read_text()
    assert "| **cvar_brier** |" in text and "random —" in text
    assert "[chain summary](chain/run_summary.json)" in text
