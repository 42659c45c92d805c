"""HumanEval+ environment: canonical solutions pass, wrong ones fail, hostile code is contained."""

from __future__ import annotations

import json

import pytest
from _helpers import sandbox_or_skip

from pipelines.envs import Env, make_env
from pipelines.envs.humaneval import (
    HumanEvalEnv,
    build_program,
    evaluate_solution,
    load_problems,
)

# Tests that run code need the sandbox (bubblewrap); CI installs it.
_NO_EXEC = {
    "test_dataset_complete",
    "test_splits_are_disjoint_and_cover",
    "test_full_program_keeps_imports",
    "test_bad_arguments",
    "test_output_encoding_round_trip",
    "test_refused_without_bubblewrap_unless_opted_in",
}


_sandbox_or_skip = sandbox_or_skip(_NO_EXEC)


@pytest.fixture(scope="module")
def problems():
    return {p.task_id: p for p in load_problems()}


@pytest.fixture
def env(he_cache) -> HumanEvalEnv:
    return HumanEvalEnv(cache_dir=he_cache)


def test_dataset_complete(problems) -> None:
    assert len(problems) == 164
    p = problems["HumanEval/0"]
    assert p.entry_point == "has_close_elements"
    assert p.plus_input and p.base_input


def test_splits_are_disjoint_and_cover(env) -> None:
    train, val, test = env.tasks("train"), env.tasks("validation"), env.tasks("test")
    assert len(train) + len(val) + len(test) == 164
    assert not set(train) & set(test) and not set(val) & set(test)
    assert env.tasks("test") == test
    with pytest.raises(ValueError, match="split"):
        env.tasks("dev")


@pytest.mark.parametrize("task", ["HumanEval/0", "HumanEval/2", "HumanEval/32"])
def test_canonical_passes_base_and_plus(problems, he_cache, task) -> None:
    p = problems[task]
    program = p.prompt + p.canonical_solution
    assert evaluate_solution(p, program, suite="base", cache_dir=he_cache).passed
    assert evaluate_solution(p, program, suite="plus", cache_dir=he_cache).passed


def test_known_wrong_fails_plus(problems, he_cache) -> None:
    """A solution that memorises the base tests passes base and fails plus."""
    from pipelines.envs.humaneval import _GroundTruth
    from pipelines.sandbox import Sandbox

    p = problems["HumanEval/0"]
    base_out, _ = _GroundTruth(he_cache, Sandbox()).get(p)
    table = {repr(list(args)): out for args, out in zip(p.base_input, base_out)}
    program = (
        f"_T = {table!r}\n"
        "def has_close_elements(*args):\n"
        "    return _T.get(repr(list(args)), False)\n"
    )
    assert evaluate_solution(p, program, suite="base", cache_dir=he_cache).passed
    rep = evaluate_solution(p, program, suite="plus", cache_dir=he_cache)
    assert not rep.passed and "wrong output" in rep.error


def test_wrong_float_fails(problems, he_cache) -> None:
    p = problems["HumanEval/2"]
    rep = evaluate_solution(
        p, p.prompt + "    return number % 1.0 + 1e-3\n", cache_dir=he_cache
    )
    assert not rep.passed


def test_three_action_loop_with_expert(env) -> None:
    assert isinstance(env, Env)
    obs = env.reset("HumanEval/0", seed=0)
    assert "has_close_elements" in obs
    done, success, steps = False, False, 0
    while not done:
        action = env.expert_action()
        assert action is not None
        obs, done, success, info = env.step(action)
        steps += 1
        assert info["step"] == steps
        assert {"tool_error", "truncated", "perturbations"} <= set(info)
    assert success and steps == 3
    assert info["base_passed"] and info["plus_passed"]
    assert env.expert_action() is None


def test_run_shows_examples_and_flags_errors(env) -> None:
    env.reset("HumanEval/0")
    obs, done, _, info = env.step("WRITE\n    return sorted(numbers)[0] < threshold\n")
    assert not done and not info["tool_error"]
    obs, _, _, info = env.step("RUN")
    assert "has_close_elements(" in obs and "FAIL" in obs
    env.step("WRITE\n    raise ValueError('boom')\n")
    obs, _, _, info = env.step("RUN")
    assert info["tool_error"] and "boom" in obs
    obs, done, success, info = env.step("SUBMIT")
    assert done and not success and not info["base_passed"]


def test_hostile_submission_is_contained(env, tmp_path) -> None:
    env.reset("HumanEval/0")
    env.step("WRITE\n    import os\n    os._exit(0)\n")
    _, done, success, _ = env.step("SUBMIT")
    assert done and not success
    env.reset("HumanEval/0")
    env.step("WRITE\n    while True:\n        pass\n")
    env.sandbox.wall_time = 2.0
    obs, _, _, info = env.step("RUN")
    assert info["tool_error"] and "timed out" in obs


def test_unknown_action_and_step_limit(he_cache) -> None:
    env = make_env("humaneval", cache_dir=he_cache, max_steps=2)
    env.reset("HumanEval/2")
    obs, done, _, info = env.step("DANCE")
    assert info["tool_error"] and "Unknown action" in obs and not done
    _, done, success, info = env.step("RUN")
    assert done and not success and info["step_limit"]
    with pytest.raises(RuntimeError, match="reset"):
        env.step("RUN")


def test_full_program_keeps_imports(problems) -> None:
    p = problems["HumanEval/0"]
    prog = build_program(p, "def has_close_elements(numbers, threshold):\n    pass\n")
    assert prog.startswith("from typing import List")


def test_bad_arguments(problems) -> None:
    with pytest.raises(ValueError, match="suite"):
        evaluate_solution(problems["HumanEval/0"], "", suite="extra")
    with pytest.raises(ValueError, match="name"):
        make_env("atari")
    with pytest.raises(FileNotFoundError, match="path"):
        load_problems("/nonexistent.jsonl")


@pytest.mark.slow
def test_all_canonical_solutions_pass(tmp_path) -> None:
    """All 164 canonical solutions pass base and plus (~1-2 min on 2 cores)."""
    from pipelines.check_humaneval import CheckHumanEvalConfig, main

    summary = main(CheckHumanEvalConfig(n_jobs=2, out=str(tmp_path / "s.json")))
    assert summary["failures"] == []
    assert summary["base_passed"] == summary["plus_passed"] == 164


# ------------------------------------------- X2 (issue 14): forged verdicts
_FORGE_CHANNEL = """
import json, os, pickle, sys
_m = sys.modules["__main__"]
def _inputs():
    for name, load in (("inputs.pkl", pickle.load), ("inputs.json", json.load)):
        try:
            with open(name, "rb") as fh:
                return load(fh)
        except Exception:
            pass
    return [None] * 2000
_n = len(_inputs())
_fake = {"status": "done", "results": [{"ok": True, "got": "0.5"}] * _n}
os.write(getattr(_m, "_OUT", 1), (getattr(_m, "_NONCE", "") + json.dumps(_fake) + "\\n").encode())
with open("outputs.jsonl", "w") as fh:  # today's channel: claim every answer
    for i in range(_n):
        fh.write(json.dumps({"i": i, "ok": True, "out": True}) + "\\n")
os._exit(0)
def truncate_number(number):
    return 0.0
"""

_LOOKUP_TABLE = """
import json, os, pickle
_T = {}
def _load(name):
    with open(name, "rb") as fh:
        return pickle.load(fh) if name.endswith(".pkl") else json.load(fh)
try:
    _ins = _load("inputs.pkl")
except Exception:
    _ins = _load("inputs.json")
for _name in os.listdir("."):
    if "expect" in _name or "output" in _name or "answer" in _name:
        try:
            _outs = _load(_name)
            _T = {repr(list(a)): o for a, o in zip(_ins, _outs)}
        except Exception:
            pass
def truncate_number(number):
    return _T.get(repr([number]), 0.0)
"""

_PATCH_CHECKER = """
import sys
_m = sys.modules["__main__"]
_m._check = lambda *a, **k: True
_m._close = lambda *a, **k: True
def truncate_number(number):
    return 0.0
"""

_ALWAYS_EQUAL = """
class _Eq(float):
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False
    __hash__ = float.__hash__
class _Any:
    def __eq__(self, other):
        return True
def truncate_number(number):
    return _Eq(0.0) if number > 1 else _Any()
"""


@pytest.mark.parametrize(
    "attack",
    [
        pytest.param(_FORGE_CHANNEL, id="a-forged-verdict"),
        pytest.param(_LOOKUP_TABLE, id="b-expected-outputs-table"),
        pytest.param(_PATCH_CHECKER, id="c-patched-checker"),
        pytest.param(_ALWAYS_EQUAL, id="d-always-equal-object"),
    ],
)
def test_x2_wrong_solution_cannot_fake_a_pass(problems, he_cache, attack) -> None:
    """X2: a wrong program that attacks the harness still fails 0/971."""
    p = problems["HumanEval/2"]
    control = evaluate_solution(
        p, p.prompt + "    return 0.0\n", suite="plus", cache_dir=he_cache
    )
    assert not control.passed and control.n_passed == 0
    rep = evaluate_solution(p, attack, suite="plus", cache_dir=he_cache)
    assert not rep.passed, rep
    assert rep.n_passed == 0 and rep.n_total == 971


def test_expected_outputs_never_enter_the_sandbox(env) -> None:
    env.reset("HumanEval/0")
    env.step("WRITE\n    import os\n    return sorted(os.listdir('.'))\n")
    obs, _, _, info = env.step("RUN")
    listing = "['inputs.json', 'main.py', 'outputs.jsonl', 'solution.py', 'spec.json']"
    assert listing in obs
    assert info["isolation"]["mode"] == "bwrap"
    assert info["isolation"]["allow_weak_isolation"] == "false"


def test_output_encoding_round_trip() -> None:
    from pipelines.envs.humaneval import _HARNESS, _decode

    ns: dict = {}
    exec(_HARNESS.split("def _main")[0], ns)
    values = [
        None,
        True,
        3,
        -(10**5000),
        1.5,
        float("inf"),
        "s",
        [1, (2, 3)],
        {(1, 2): {"a"}},
        frozenset({1}),
        b"\x00",
        2j,
    ]
    for v in values:
        assert _decode(json.loads(json.dumps(ns["_enc"](v)))) == v
    opaque = _decode(ns["_enc"](object()))
    assert opaque != opaque.__class__("object", "x") and "object" in repr(opaque)
    with pytest.raises(ValueError, match="unknown output kind"):
        _decode({"$": "pickle", "v": ""})


def test_refused_without_bubblewrap_unless_opted_in(
    problems, tmp_path, no_bwrap
) -> None:
    """Fail closed: no bubblewrap, no execution; the opt-in is recorded."""
    from pipelines.sandbox import Sandbox, SandboxUnavailableError

    p = problems["HumanEval/0"]
    program = p.prompt + p.canonical_solution
    with pytest.raises(SandboxUnavailableError, match="allow_weak_isolation"):
        evaluate_solution(p, program, cache_dir=tmp_path / "gt")
    weak = Sandbox(wall_time=30.0, memory_mb=2048, allow_weak_isolation=True)
    assert evaluate_solution(p, program, sandbox=weak, cache_dir=tmp_path / "gt").passed
    env = HumanEvalEnv(sandbox=weak, cache_dir=tmp_path / "gt")
    env.reset("HumanEval/0")
    _, _, _, info = env.step("RUN")
    assert info["isolation"]["mode"] == "weak"
    assert info["isolation"]["allow_weak_isolation"] == "true"


def test_check_humaneval_smoke(he_cache, tmp_path) -> None:
    from pipelines.check_humaneval import CheckHumanEvalConfig, main, make_parser

    cfg = CheckHumanEvalConfig(
        limit=2, n_jobs=1, cache_dir=str(he_cache), out=str(tmp_path / "s.json")
    )
    summary = main(cfg)
    assert summary["base_passed"] == summary["plus_passed"] == 2
    assert summary["isolation"]["mode"] == "bwrap"
    assert json.loads((tmp_path / "s.json").read_text())["n"] == 2
    args = make_parser().parse_args(["--allow-weak-isolation", "--limit", "1"])
    assert args.allow_weak_isolation and args.limit == 1
