"""Collection: schema, parallel backends (dask LocalCluster), SIGKILL resume,
and the output-file guarantees of issue 16 (lock, suffix, foreign lines, workers)."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from pipelines.collect import (
    SCHEMA,
    CollectConfig,
    OutputLockedError,
    _cli,
    load_records,
    main,
    make_parser,
)

TASKS = ["HumanEval/2", "HumanEval/13", "HumanEval/23"]
#: The repository root, where the collection CLI runs.
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cfg(tmp_path, he_cache) -> CollectConfig:
    return CollectConfig(
        env="humaneval",
        out=str(tmp_path / "traj.jsonl"),
        env_kwargs={"cache_dir": str(he_cache)},
        tasks=TASKS,
        n_seeds=2,
        families=["all"],
        rate=0.3,
        n_jobs=1,
        backend=None,
        progress=False,
    )


def _strip(records):
    return sorted(
        ({k: v for k, v in r.items() if k != "wall_time"} for r in records),
        key=lambda r: r["key"],
    )


def test_schema_and_determinism(cfg) -> None:
    summary = main(cfg)
    assert summary["n_new"] == 6 and summary["n_skipped"] == 0
    recs = load_records(cfg.out)
    assert len({r["key"] for r in recs}) == 6
    for r in recs:
        assert r["schema"] == SCHEMA and r["env"] == "humaneval"
        assert r["n_steps"] == len(r["steps"]) >= 1
        for s in r["steps"]:
            assert {"t", "action", "observation", "done", "success", "info"} <= set(s)
            assert {"tool_error", "truncated", "perturbations", "step"} <= set(
                s["info"]
            )
    assert any(s["info"]["perturbations"] for r in recs for s in r["steps"])
    # Rerun: nothing new; a second file from scratch is identical.
    assert main(cfg)["n_new"] == 0
    again = replace(cfg, out=cfg.out.replace(".jsonl", "_2.jsonl"))
    main(again)
    assert _strip(load_records(again.out)) == _strip(recs)


def test_dask_local_cluster_matches_serial(cfg) -> None:
    distributed = pytest.importorskip("distributed")
    from joblib import parallel_config

    main(cfg)
    serial = load_records(cfg.out)
    dcfg = replace(cfg, out=cfg.out.replace(".jsonl", "_dask.jsonl"), n_jobs=-1)
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster),
        parallel_config(backend="dask"),
    ):
        main(dcfg)
    assert _strip(load_records(dcfg.out)) == _strip(serial)


def test_torn_last_line_is_repaired(cfg) -> None:
    small = replace(cfg, tasks=TASKS[:1])
    main(small)
    with open(small.out, "a") as fh:
        fh.write('{"schema": "r2vcal.trajectory/v1", "key": "humaneval|Hum')
    assert len(load_records(small.out)) == 2
    main(replace(small, n_seeds=3))
    recs = load_records(small.out)
    assert sorted(r["seed"] for r in recs) == [0, 1, 2]
    assert all(json.loads(ln) for ln in Path(small.out).read_text().splitlines())


@pytest.mark.slow
def test_sigkill_mid_run_then_resume(cfg, tmp_path) -> None:
    tasks = [f"HumanEval/{i}" for i in (2, 4, 7, 12, 13, 15 + 1, 23, 29, 30, 34)]
    out = tmp_path / "killed.jsonl"
    flags = ("--rate", "0.3", "--n-jobs", "1", "--backend", "loky")
    args = _collect_argv(replace(cfg, tasks=tasks), out, *flags)
    proc = _start_until(args, out, n_lines=3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_before = len(load_records(out))
    assert 3 <= n_before < 20
    subprocess.run(args, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    lines = out.read_text().splitlines()
    recs = [json.loads(ln) for ln in lines]  # every line parses
    keys = [r["key"] for r in recs]
    assert len(keys) == len(set(keys)) == 20


def test_parser_round_trip() -> None:
    ns = make_parser().parse_args(
        ["--env", "textworld", "--families", "distractors", "--n-seeds", "3"]
    )
    c = CollectConfig(**vars(ns))
    assert c.env == "textworld" and c.families == ["distractors"] and c.n_seeds == 3
    with pytest.raises(ValueError, match="n_seeds"):
        main(replace(c, n_seeds=0))


# --- issue 16: nothing lost, nothing silently wrong ------------------------------


def _cli_args(cfg: CollectConfig, out) -> list[str]:
    return [
        "--env",
        cfg.env,
        "--env-kwargs",
        json.dumps(cfg.env_kwargs),
        "--tasks",
        *cfg.tasks,
        "--n-seeds",
        str(cfg.n_seeds),
        "--no-progress",
        "--out",
        str(out),
    ]


def _collect_argv(cfg: CollectConfig, out, *extra: str) -> list[str]:
    """``python -m pipelines.collect`` on ``cfg`` into ``out``, then ``extra``."""
    return [sys.executable, "-m", "pipelines.collect", *_cli_args(cfg, out), *extra]


def _start_until(args: list[str], out: Path, n_lines: int) -> subprocess.Popen:
    """Start ``args`` from the repository root; return it once ``out`` holds
    ``n_lines`` complete lines (or after two minutes)."""
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        if out.exists() and out.read_bytes().count(b"\n") >= n_lines:
            break
        time.sleep(0.05)
    return proc


def _record_line(key: str, schema: str = SCHEMA) -> str:
    return json.dumps({"schema": schema, "key": key, "success": True}) + "\n"


def test_held_lock_gives_a_clear_error_and_writes_nothing(cfg) -> None:
    out = Path(cfg.out)
    out.write_text(_record_line("humaneval|HumanEval/2|0"))
    before = out.read_bytes()
    with open(out, "ab") as other:
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(OutputLockedError, match="locked by another collection"):
            main(cfg)
        with pytest.raises(OutputLockedError):
            load_records(out, repair=True)
    assert out.read_bytes() == before
    assert load_records(out, repair=True)[0]["key"] == "humaneval|HumanEval/2|0"


@pytest.mark.slow
def test_second_run_on_the_same_out_stops_and_writes_nothing(cfg, tmp_path) -> None:
    tasks = [f"HumanEval/{i}" for i in (2, 4, 7, 12, 13, 16, 23, 29)]
    out = tmp_path / "both.jsonl"
    args = _collect_argv(replace(cfg, tasks=tasks), out)
    first = _start_until(args, out, n_lines=1)
    second = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    assert first.poll() is None, "the first run ended before the second started"
    assert first.wait(timeout=300) == 0
    assert second.returncode == 2
    assert "locked by another collection run" in second.stderr
    assert second.stderr.count("\n") == 1
    keys = [json.loads(ln)["key"] for ln in out.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 16


def test_refuses_an_output_that_is_not_jsonl(cfg, tmp_path) -> None:
    precious = tmp_path / "precious.csv"
    precious.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"must be a \.jsonl file"):
        main(replace(cfg, out=str(precious)))
    assert precious.read_text() == "a,b\n1,2\n"
    assert not (tmp_path / "precious.jsonl").exists()


@pytest.mark.parametrize(
    "content",
    [
        '{"some": "other tool"}\n',
        "not json at all\n",
        _record_line("humaneval|HumanEval/2|0", schema="r2vcal.trajectory/v2"),
    ],
)
def test_refuses_an_output_whose_first_line_is_not_ours(cfg, tmp_path, content) -> None:
    precious = tmp_path / "precious.jsonl"
    precious.write_text(content + _record_line("humaneval|HumanEval/2|1"))
    before = precious.read_bytes()
    with pytest.raises(ValueError, match=r"first line is not an r2vcal\.trajectory/v1"):
        main(replace(cfg, out=str(precious)))
    with pytest.raises(ValueError, match="first line"):
        load_records(precious, repair=True)
    assert precious.read_bytes() == before


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (_record_line("humaneval|x|0", schema="r2vcal.trajectory/v2"), "trajectory/v2"),
        ('{"schema": "r2vcal.trajectory/v1", "key": "hum\n', "not valid JSON"),
        ("[1, 2]\n", "JSON list"),
        ('{"schema": "r2vcal.trajectory/v1"}\n', "no string 'key'"),
        (_record_line("humaneval|a|0"), "repeats the key 'humaneval|a|0' of line 1"),
    ],
)
def test_repair_refuses_foreign_or_unreadable_lines_and_names_them(
    tmp_path, bad, why
) -> None:
    path = tmp_path / "t.jsonl"
    text = _record_line("humaneval|a|0") + _record_line("humaneval|a|1") + bad
    text += _record_line("humaneval|a|2") + '{"schema": "r2vcal.traj'
    path.write_text(text)
    for repair in (False, True):
        with pytest.raises(ValueError, match="line 3") as info:
            load_records(path, repair=repair)
        assert why in str(info.value)
    assert path.read_text() == text


def test_repair_keeps_a_complete_final_record_without_newline(tmp_path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(_record_line("humaneval|a|0") + _record_line("humaneval|a|1")[:-1])
    assert [r["key"] for r in load_records(path, repair=True)] == [
        "humaneval|a|0",
        "humaneval|a|1",
    ]
    assert path.read_text().endswith("}\n") and len(load_records(path)) == 2


def test_torn_final_line_that_is_not_ours_is_refused(tmp_path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(_record_line("humaneval|a|0") + "id,name")
    with pytest.raises(ValueError, match="line 2"):
        load_records(path, repair=True)
    assert path.read_text().endswith("id,name")


def test_cli_errors_are_one_line_exit_2(cfg, tmp_path, capsys) -> None:
    assert _cli(_cli_args(cfg, tmp_path / "x.csv")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "must be a .jsonl file" in err
    out = tmp_path / "held.jsonl"
    with open(out, "ab") as other:
        fcntl.flock(other.fileno(), fcntl.LOCK_EX)
        assert _cli(_cli_args(cfg, out)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "locked" in err


def _descendants(pid: int) -> set[int]:
    """Live processes whose parent chain reaches ``pid`` (from /proc)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] != "Z":
                parents[int(entry.name)] = int(fields[1])
    out, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - out
        out |= frontier
    return out


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_loky_workers_end_with_a_killed_parent(cfg, tmp_path) -> None:
    tasks = [f"HumanEval/{i}" for i in (2, 4, 7, 12, 13, 16, 23, 29)]
    out = tmp_path / "killed.jsonl"
    args = _collect_argv(
        replace(cfg, tasks=tasks), out, "--n-jobs", "2", "--backend", "loky"
    )
    proc = _start_until(args, out, n_lines=2)
    workers = _descendants(proc.pid)
    assert workers, "expected loky worker processes"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(Path(f"/proc/{w}").exists() for w in workers):
        time.sleep(0.1)
    alive = [w for w in workers if Path(f"/proc/{w}/stat").exists()]
    alive = [
        w
        for w in alive
        if Path(f"/proc/{w}/stat").read_text().split(")")[1].split()[0] != "Z"
    ]
    assert not alive, f"workers outlived the killed run: {alive}"
    # the next run takes the lock and completes the file
    subprocess.run(args, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    keys = [json.loads(ln)["key"] for ln in out.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 16
