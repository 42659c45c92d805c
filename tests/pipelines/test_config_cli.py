"""The command-line builder of pipelines/_cli.py and the parsers built with it."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import pytest

from pipelines import bc, collect, demo, dpo, evaluate, rollout, run, verifier
from pipelines._cli import config_parser, docstring_parameters, parse_config, run_cli
from pipelines.prompting import PromptConfig, prompt_kwargs_of


@dataclass
class _Config:
    """Options.

    Parameters
    ----------
    name : str
        The ``name`` (see :class:`pipelines.bc.BCConfig`), 100% kept.
    seeds : list of int
        Seeds.
    rate, scale : float
        A rate.
    settings : dict or None
    dpo : bool
        Run DPO.
    reuse : bool
        Reuse.
    """

    name: str
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    rate: float | None = None
    scale: float = 1.0
    settings: dict | None = None
    dpo: bool = True
    reuse: bool = False


def test_types_defaults_and_flags_come_from_the_dataclass() -> None:
    p = config_parser(_Config, "demo")
    argv = ["--name", "a", "--seeds", "3", "4", "--rate", "0.5", "--no-dpo"]
    args = p.parse_args([*argv, "--settings", '{"k": 1}', "--reuse"])
    cfg = parse_config(p, _Config, ["--name", "a"])
    assert cfg == _Config(name="a")
    assert vars(args) == {
        "name": "a",
        "seeds": [3, 4],
        "rate": 0.5,
        "scale": 1.0,
        "settings": {"k": 1},
        "dpo": False,
        "reuse": True,
    }
    with pytest.raises(SystemExit):
        p.parse_args([])  # --name is required


def test_help_comes_from_the_docstring(capsys) -> None:
    doc = docstring_parameters(_Config.__doc__)
    assert doc["rate"] == doc["scale"] == "A rate."
    assert doc["settings"] == "dict or None"
    with pytest.raises(SystemExit):
        config_parser(_Config, "demo").parse_args(["--help"])
    out = capsys.readouterr().out
    assert "The name (see pipelines.bc.BCConfig), 100% kept." in out
    assert "Sets dpo to False (Run DPO)." in out


def test_fields_and_overrides() -> None:
    p = config_parser(
        _Config,
        "demo",
        fields=["name", "dpo"],
        overrides={"dpo": {"flag": "--quiet"}, "name": {"choices": ["a", "b"]}},
    )
    assert p.parse_args(["--name", "b", "--quiet"]).dpo is False
    with pytest.raises(SystemExit):
        p.parse_args(["--name", "c"])
    with pytest.raises(ValueError, match=r"_Config.*Got unknown \['nope'\]"):
        config_parser(_Config, "demo", fields=["nope"])
    with pytest.raises(TypeError, match="must be a dataclass type"):
        config_parser(dict, "demo")


def test_run_cli_prints_json(monkeypatch, capsys) -> None:
    monkeypatch.setattr("sys.argv", ["prog", "--name", "x"])
    run_cli(config_parser(_Config, "demo"), _Config, lambda c: {"n": c.name})
    assert json.loads(capsys.readouterr().out) == {"n": "x"}


@pytest.mark.parametrize(
    ("module", "flags"),
    [
        (bc, ["--trajectories", "--all-episodes", "--n-turns", "--warmup-ratio"]),
        (collect, ["--env-kwargs", "--no-progress", "--tasks", "--families"]),
        (run, ["--no-dpo", "--quiet", "--settings", "--kind", "--families"]),
        (verifier, ["--C", "--no-refit", "--encoder"]),
        (demo, ["--no-shipped", "--reuse-chain"]),
        (evaluate, ["--test-seeds", "--rates", "--policy", "--select"]),
    ],
)
def test_pipeline_parsers_keep_their_flags(module, flags) -> None:
    usage = module.make_parser().format_usage()
    assert all(f"[{flag}" in usage or f" {flag} " in usage for flag in flags)


@dataclass
class _Inner:
    """Parameters
    ----------
    width : int
        Columns.
    strict : bool
        Fail on wide rows.
    """

    width: int = 10
    strict: bool = True


@dataclass
class _Outer:
    """Parameters
    ----------
    name : str
    inner : _Inner
        The nested settings.
    """

    name: str = "a"
    inner: _Inner = field(default_factory=lambda: _Inner(width=20, strict=False))


def test_a_nested_dataclass_is_flattened_into_options(capsys) -> None:
    p = config_parser(_Outer, "demo")
    # defaults come from the outer field's default instance, not the inner class
    assert parse_config(p, _Outer, []) == _Outer()
    cfg = parse_config(p, _Outer, ["--width", "5", "--strict"])
    assert cfg == _Outer(inner=_Inner(width=5, strict=True))
    with pytest.raises(SystemExit):
        p.parse_args(["--help"])
    assert "Columns." in capsys.readouterr().out


@pytest.mark.parametrize(
    ("module", "cls", "required"),
    [
        (bc, bc.BCConfig, ["--trajectories", "t.jsonl"]),
        (verifier, verifier.VerifierConfig, ["--trajectories", "t.jsonl"]),
        (dpo, dpo.DPOConfigR2V, ["--trajectories", "t.jsonl"]),
        (rollout, rollout.RolloutConfig, []),
        (run, run.RunConfig, []),
    ],
)
def test_every_step_takes_the_prompt_options(module, cls, required) -> None:
    argv = ["--n-turns", "3", "--max-obs-chars", "50", "--no-drop-prompt-lines"]
    cfg = parse_config(module.make_parser(), cls, [*required, *argv])
    want = PromptConfig(n_turns=3, max_obs_chars=50, drop_prompt_lines=False)
    assert cfg.prompt == want
    assert prompt_kwargs_of(cfg) == prompt_kwargs_of(dataclasses.asdict(cfg))
    assert prompt_kwargs_of(cfg) == want.kwargs()
