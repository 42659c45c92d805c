"""HumanEval+ as a three-action environment, executed in the sandbox.

Actions (the first line names the verb, case-insensitive):

``WRITE`` followed by code on the next lines
    Store a solution. The code is either a completion of the prompt (appended
    to it, as in HumanEval) or a full program defining the entry point (the
    prompt's import lines are prepended).
``RUN``
    Run the stored solution on the visible examples (the first few base
    inputs) and show each output next to the expected one.
``SUBMIT``
    Run the base and plus tests; the episode ends and succeeds when both pass.

Tests follow EvalPlus: expected outputs are the canonical solution's outputs
(computed once per problem in the sandbox and cached on disk), floats are
compared with ``atol`` (``1e-6`` when the problem gives 0), and ``find_zero``
is checked by evaluating the polynomial at the returned root.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import pickle
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.envs.base import base_info
from pipelines.sandbox import Sandbox

__all__ = [
    "HumanEvalEnv",
    "HumanEvalProblem",
    "TestReport",
    "default_data_path",
    "evaluate_solution",
    "load_problems",
]

_DATA_FILE = "HumanEvalPlus-v0.1.10.jsonl.gz"

_HARNESS = r"""
import copy
import json
import math
import os
import pickle
import sys

_OUT = os.dup(1)
_NONCE = sys.stdin.readline().strip()


def _repr(x):
    try:
        return repr(x)[:200]
    except Exception as exc:  # noqa: BLE001 - any repr failure is shown, not raised
        return f"<unrepresentable {type(x).__name__}: {exc}>"[:200]


def _poly(xs, x):
    return sum(c * math.pow(x, i) for i, c in enumerate(xs))


def _is_floats(x):
    if isinstance(x, float):
        return True
    if isinstance(x, (list, tuple)) and x:
        return all(isinstance(i, float) for i in x)
    return False


def _close(out, exp, atol):
    if type(out) is not type(exp):
        return False
    if isinstance(exp, (list, tuple)):
        return len(out) == len(exp) and all(_close(o, e, atol) for o, e in zip(out, exp))
    if isinstance(exp, float):
        if math.isnan(exp):
            return math.isnan(out)
        return abs(out - exp) <= atol + 1e-7 * abs(exp)
    return out == exp


def _check(entry, out, exp, inp, atol):
    if entry == "find_zero":
        return abs(_poly(*inp, out)) <= atol
    if atol == 0 and _is_floats(exp):
        atol = 1e-6
    if out == exp:
        return True
    return atol != 0 and _close(out, exp, atol)


def _report(payload):
    os.write(_OUT, (_NONCE + json.dumps(payload) + "\n").encode())


def _main():
    spec = json.load(open("spec.json"))
    entry, atol, mode = spec["entry_point"], spec["atol"], spec["mode"]
    with open("inputs.pkl", "rb") as fh:
        inputs = pickle.load(fh)
    expected = None
    if mode != "groundtruth":
        with open("expected.pkl", "rb") as fh:
            expected = pickle.load(fh)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    ns = {"__name__": "solution"}
    try:
        with open("solution.py") as fh:
            src = fh.read()
        exec(compile(src, "solution.py", "exec"), ns)
        fn = ns[entry]
    except BaseException as exc:  # noqa: BLE001 - report any failure to load
        _report({"status": "load_error", "error": f"{type(exc).__name__}: {exc}"[:500]})
        return
    results = []
    outputs = []
    for i, inp in enumerate(inputs):
        try:
            out = fn(*copy.deepcopy(inp))
        except BaseException as exc:  # noqa: BLE001 - a crash fails this input
            results.append({"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]})
            outputs.append(None)
            if mode == "tests":
                break
            continue
        if mode == "groundtruth":
            outputs.append(out)
            results.append({"ok": True})
            continue
        ok = _check(entry, out, expected[i], inp, atol)
        results.append({"ok": bool(ok), "got": _repr(out)})
        if mode == "tests" and not ok:
            break
    payload = {"status": "done", "results": results}
    if mode == "groundtruth":
        with open("outputs.pkl", "wb") as fh:
            pickle.dump(outputs, fh)
    _report(payload)


_main()
"""


@dataclass(frozen=True)
class HumanEvalProblem:
    """One HumanEval+ problem.

    Attributes
    ----------
    task_id, prompt, entry_point, canonical_solution : str
        As in the dataset.
    base_input, plus_input : list
        Argument tuples of the base and plus tests.
    atol : float
        Absolute tolerance for float outputs.
    """

    task_id: str
    prompt: str
    entry_point: str
    canonical_solution: str
    base_input: list
    plus_input: list
    atol: float


@dataclass
class TestReport:
    """Result of running a solution on a test suite.

    Attributes
    ----------
    passed : bool
        Every input produced the expected output.
    n_passed, n_total : int
        Inputs checked (a suite stops at the first failure) and inputs in it.
    error : str
        Why it failed (load error, exception, timeout, wrong output); ``""``.
    timed_out : bool
        The wall-clock limit expired.
    wall_time : float
        Seconds spent in the sandbox.
    """

    __test__ = False  # not a pytest class

    passed: bool
    n_passed: int
    n_total: int
    error: str = ""
    timed_out: bool = False
    wall_time: float = 0.0


def default_data_path() -> Path:
    """Path of the shipped HumanEval+ file (``datasets/humanevalplus``)."""
    return (
        Path(__file__).resolve().parents[2] / "datasets" / "humanevalplus" / _DATA_FILE
    )


def load_problems(path: str | Path | None = None) -> list[HumanEvalProblem]:
    """Load HumanEval+ problems.

    Parameters
    ----------
    path : str or Path, optional
        A ``.jsonl`` or ``.jsonl.gz`` file; defaults to the shipped copy.

    Returns
    -------
    list of HumanEvalProblem
    """
    path = Path(path) if path is not None else default_data_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"HumanEval+ data not found at {path}; pass 'path' to a "
            "HumanEvalPlus-*.jsonl(.gz) file."
        )
    opener = gzip.open if path.suffix == ".gz" else open
    problems = []
    with opener(path, "rt") as fh:
        for line in fh:
            if not line.strip():
                continue
            row = json.loads(line)
            problems.append(
                HumanEvalProblem(
                    task_id=row["task_id"],
                    prompt=row["prompt"],
                    entry_point=row["entry_point"],
                    canonical_solution=row["canonical_solution"],
                    base_input=row["base_input"],
                    plus_input=row["plus_input"],
                    atol=float(row.get("atol") or 0.0),
                )
            )
    return problems


def _import_header(prompt: str) -> str:
    lines = [
        ln for ln in prompt.splitlines() if re.match(r"^(import |from \S+ import )", ln)
    ]
    return "\n".join(lines) + ("\n\n" if lines else "")


def build_program(problem: HumanEvalProblem, code: str) -> str:
    """Turn a written solution into a program defining the entry point.

    Parameters
    ----------
    problem : HumanEvalProblem
    code : str
        A completion of the prompt or a full program.

    Returns
    -------
    str
    """
    if re.search(rf"^\s*def\s+{re.escape(problem.entry_point)}\s*\(", code, re.M):
        return _import_header(problem.prompt) + code
    return problem.prompt + code


def _run_harness(
    sandbox: Sandbox,
    problem: HumanEvalProblem,
    program: str,
    inputs: list,
    expected: list | None,
    mode: str,
) -> tuple[dict[str, Any] | None, Any]:
    nonce = "@@R2V-" + secrets.token_hex(8) + "@@"
    files: dict[str, str | bytes] = {
        "solution.py": program,
        "inputs.pkl": pickle.dumps(inputs),
        "spec.json": json.dumps(
            {"entry_point": problem.entry_point, "atol": problem.atol, "mode": mode}
        ),
    }
    if expected is not None:
        files["expected.pkl"] = pickle.dumps(expected)
    res = sandbox.run_python(
        _HARNESS,
        files=files,
        stdin=nonce + "\n",
        read_files=("outputs.pkl",) if mode == "groundtruth" else (),
    )
    payload = None
    for line in res.stdout.splitlines():
        if line.startswith(nonce):
            with contextlib.suppress(json.JSONDecodeError):
                payload = json.loads(line[len(nonce) :])
    if payload is not None and mode == "groundtruth":
        payload["outputs"] = res.files.get("outputs.pkl")
    return payload, res


class _GroundTruth:
    """Canonical outputs per problem, computed in the sandbox, cached on disk."""

    def __init__(self, cache_dir: Path, sandbox: Sandbox) -> None:
        self.cache_dir = cache_dir
        # Some canonical outputs are large (HumanEval/15 yields ~100 MB).
        self.sandbox = Sandbox(
            wall_time=max(sandbox.wall_time, 60.0),
            memory_mb=max(sandbox.memory_mb, 4096),
            max_file_mb=1024,
            isolate=sandbox.isolate,
            python=sandbox.python,
        )
        self._mem: dict[str, tuple[list, list]] = {}

    def get(self, problem: HumanEvalProblem) -> tuple[list, list]:
        if problem.task_id in self._mem:
            return self._mem[problem.task_id]
        fname = problem.task_id.replace("/", "_") + ".pkl"
        path = self.cache_dir / fname
        if path.is_file():
            with open(path, "rb") as fh:
                out = pickle.load(fh)
        else:
            program = problem.prompt + problem.canonical_solution
            inputs = problem.base_input + problem.plus_input
            payload, res = _run_harness(
                self.sandbox, problem, program, inputs, None, "groundtruth"
            )
            if payload is None or payload.get("status") != "done":
                raise RuntimeError(
                    f"canonical solution of {problem.task_id} failed to run: "
                    f"{(payload or {}).get('error') or res.stderr[-500:]}"
                )
            if payload["outputs"] is None:
                raise RuntimeError(f"no outputs written for {problem.task_id}")
            outputs = pickle.loads(payload["outputs"])
            nb = len(problem.base_input)
            out = (outputs[:nb], outputs[nb:])
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{secrets.token_hex(4)}")
            with open(tmp, "wb") as fh:
                pickle.dump(out, fh)
            tmp.replace(path)
        self._mem[problem.task_id] = out
        return out


def _default_cache() -> Path:
    return Path.home() / ".cache" / "r2vcal" / "humanevalplus" / "v0.1.10"


def evaluate_solution(
    problem: HumanEvalProblem,
    program: str,
    *,
    suite: str = "base",
    sandbox: Sandbox | None = None,
    cache_dir: str | Path | None = None,
) -> TestReport:
    """Run a full program on a problem's base or plus tests in the sandbox.

    Parameters
    ----------
    problem : HumanEvalProblem
    program : str
        Source defining ``problem.entry_point``.
    suite : {"base", "plus"}, default="base"
        Which test inputs to run.
    sandbox : Sandbox, optional
        Limits; default 30 s wall time, 2 GiB memory.
    cache_dir : str or Path, optional
        Ground-truth cache (default ``~/.cache/r2vcal/humanevalplus/v0.1.10``).

    Returns
    -------
    TestReport
    """
    if suite not in ("base", "plus"):
        raise ValueError(
            "The 'suite' parameter of evaluate_solution must be a str among "
            f"{{'base', 'plus'}}. Got {suite!r} instead."
        )
    sandbox = sandbox or Sandbox(wall_time=30.0, memory_mb=2048)
    gt = _GroundTruth(Path(cache_dir) if cache_dir else _default_cache(), sandbox)
    base_out, plus_out = gt.get(problem)
    if suite == "base":
        inputs, expected = problem.base_input, base_out
    else:
        inputs, expected = problem.plus_input, plus_out
    return _tests_report(sandbox, problem, program, inputs, expected)


def _tests_report(
    sandbox: Sandbox,
    problem: HumanEvalProblem,
    program: str,
    inputs: list,
    expected: list,
) -> TestReport:
    payload, res = _run_harness(sandbox, problem, program, inputs, expected, "tests")
    if payload is None:
        why = "timed out" if res.timed_out else f"exit status {res.returncode}"
        return TestReport(
            False, 0, len(inputs), f"no result ({why})", res.timed_out, res.wall_time
        )
    if payload["status"] != "done":
        return TestReport(
            False, 0, len(inputs), payload.get("error", ""), False, res.wall_time
        )
    results = payload["results"]
    n_ok = sum(r["ok"] for r in results)
    passed = n_ok == len(inputs)
    error = ""
    if not passed and results:
        last = results[-1]
        error = last.get("error") or f"wrong output: got {last.get('got')}"
    return TestReport(passed, n_ok, len(inputs), error, False, res.wall_time)


class HumanEvalEnv:
    """HumanEval+ as a write / run / submit environment.

    Parameters
    ----------
    data_path : str or Path, optional
        HumanEval+ JSONL(.gz); defaults to ``datasets/humanevalplus``.
    n_visible : int, default=3
        Base inputs shown by ``RUN``.
    max_steps : int, default=8
        Steps before the episode ends unsolved.
    sandbox : Sandbox, optional
        Execution limits (default 30 s, 2 GiB).
    cache_dir : str or Path, optional
        Ground-truth cache directory.
    split_seed : int, default=0
        Seed of the fixed train/validation/test split (60/20/20 %).
    """

    name = "humaneval"

    def __init__(
        self,
        data_path: str | Path | None = None,
        *,
        n_visible: int = 3,
        max_steps: int = 8,
        sandbox: Sandbox | None = None,
        cache_dir: str | Path | None = None,
        split_seed: int = 0,
    ) -> None:
        if n_visible < 1:
            raise ValueError(f"n_visible must be >= 1; got {n_visible!r}.")
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1; got {max_steps!r}.")
        self.problems = {p.task_id: p for p in load_problems(data_path)}
        self.n_visible = n_visible
        self.max_steps = max_steps
        self.sandbox = sandbox or Sandbox(wall_time=30.0, memory_mb=2048)
        self._gt = _GroundTruth(
            Path(cache_dir) if cache_dir else _default_cache(), self.sandbox
        )
        self.split_seed = split_seed
        self._problem: HumanEvalProblem | None = None
        self._code: str | None = None
        self._ran = False
        self._t = 0
        self._done = True

    def tasks(self, split: str = "test") -> list[str]:
        """Task ids of a split (``"train"``, ``"validation"``, ``"test"``, ``"all"``)."""
        import numpy as np

        ids = sorted(self.problems, key=lambda t: int(t.split("/")[-1]))
        if split == "all":
            return ids
        order = np.random.default_rng(self.split_seed).permutation(len(ids))
        n_train, n_val = int(0.6 * len(ids)), int(0.2 * len(ids))
        parts = {
            "train": order[:n_train],
            "validation": order[n_train : n_train + n_val],
            "test": order[n_train + n_val :],
        }
        if split not in parts:
            raise ValueError(
                "The 'split' parameter must be a str among "
                f"{{'train', 'validation', 'test', 'all'}}. Got {split!r} instead."
            )
        return [ids[i] for i in sorted(parts[split])]

    def reset(self, task: str, seed: int = 0) -> str:
        """Start problem ``task`` (e.g. ``"HumanEval/0"``); ``seed`` is unused."""
        if task not in self.problems:
            raise KeyError(f"unknown HumanEval+ task {task!r}; see env.tasks('all').")
        self._problem = self.problems[task]
        self._code = None
        self._ran = False
        self._t = 0
        self._done = False
        return (
            "Complete the following Python function.\n"
            "Actions: 'WRITE' then your code on the next lines; 'RUN' to run "
            "the examples; 'SUBMIT' to submit.\n\n" + self._problem.prompt
        )

    def expert_action(self) -> str | None:
        """Canonical plan: write the canonical solution, run, submit."""
        if self._problem is None or self._done:
            return None
        canonical = self._problem.canonical_solution
        if self._code is None or self._code.strip() != canonical.strip():
            return "WRITE\n" + self._problem.canonical_solution
        if not self._ran:
            return "RUN"
        return "SUBMIT"

    def step(self, action: str) -> tuple[str, bool, bool, dict[str, Any]]:
        """Apply a ``WRITE``/``RUN``/``SUBMIT`` action."""
        if self._problem is None or self._done:
            raise RuntimeError("call reset(task, seed) before step(action).")
        self._t += 1
        info = base_info(self._t)
        head, _, rest = action.strip("\n").partition("\n")
        verb = head.strip().upper()
        obs, done, success = "", False, False
        if verb.startswith("WRITE"):
            code = rest if rest.strip() else head.strip()[5:].lstrip(": ")
            self._code = code.rstrip("\n") + "\n"
            self._ran = False
            obs = f"Saved solution ({len(code.splitlines())} lines)."
        elif verb == "RUN":
            obs, err = self._run_visible()
            info["tool_error"] = err
            self._ran = True
        elif verb == "SUBMIT":
            obs, success, info_extra = self._submit()
            info.update(info_extra)
            done = True
        else:
            obs = (
                f"Unknown action {head.strip()[:40]!r}; use WRITE (then code), "
                "RUN or SUBMIT."
            )
            info["tool_error"] = True
        if not done and self._t >= self.max_steps:
            done = True
            info["step_limit"] = True
            obs += "\nStep limit reached."
        self._done = done
        return obs, done, success, info

    # -------------------------------------------------------------- helpers
    def _program(self) -> str:
        return build_program(self._current(), self._code or "")

    def _current(self) -> HumanEvalProblem:
        if self._problem is None:
            raise RuntimeError("call reset(task, seed) before step(action).")
        return self._problem

    def _run_visible(self) -> tuple[str, bool]:
        problem = self._current()
        if self._code is None:
            return "Nothing to run: WRITE a solution first.", True
        base_out, _ = self._gt.get(problem)
        inputs = problem.base_input[: self.n_visible]
        expected = base_out[: self.n_visible]
        payload, res = _run_harness(
            self.sandbox, problem, self._program(), inputs, expected, "examples"
        )
        if payload is None:
            why = "timed out" if res.timed_out else f"exit status {res.returncode}"
            return f"Execution failed ({why}).\n{res.stderr[-400:]}", True
        if payload["status"] != "done":
            return f"Error: {payload.get('error', '')}", True
        lines, err = [], False
        for inp, exp, r in zip(inputs, expected, payload["results"]):
            call = f"{problem.entry_point}({', '.join(repr(a) for a in inp)})"[:200]
            if "error" in r:
                err = True
                lines.append(f"{call} -> raised {r['error']}")
            else:
                mark = "ok" if r["ok"] else f"FAIL (expected {exp!r})"[:200]
                lines.append(f"{call} -> {r['got']}  {mark}")
        return "\n".join(lines), err

    def _submit(self) -> tuple[str, bool, dict[str, Any]]:
        problem = self._current()
        if self._code is None:
            return (
                "Nothing submitted.",
                False,
                {"base_passed": False, "plus_passed": False},
            )
        base_out, plus_out = self._gt.get(problem)
        program = self._program()
        base = _tests_report(
            self.sandbox, problem, program, problem.base_input, base_out
        )
        plus = (
            _tests_report(self.sandbox, problem, program, problem.plus_input, plus_out)
            if base.passed
            else TestReport(False, 0, len(problem.plus_input), "base tests failed")
        )
        ok = base.passed and plus.passed
        obs = (
            f"Base tests: {'passed' if base.passed else 'FAILED'} "
            f"({base.n_passed}/{base.n_total}). Plus tests: "
            f"{'passed' if plus.passed else 'FAILED'}."
        )
        if not ok:
            obs += f"\n{(base.error or plus.error)[:300]}"
        return (
            obs,
            ok,
            {
                "base_passed": base.passed,
                "plus_passed": plus.passed,
                "tool_error": bool(base.timed_out or plus.timed_out),
            },
        )
