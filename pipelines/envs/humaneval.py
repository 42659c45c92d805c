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

Verdicts are computed outside the sandbox. The solution runs there on the test
*inputs* only; a small harness writes each raw return value, JSON-encoded by
type (tuples, sets, dicts, big ints kept apart; anything else becomes an opaque
description equal to nothing), and the host decodes and compares them with the
expected outputs, which never enter the sandbox. A solution can therefore not
read the answers, patch the checker or forge a verdict; the best it can do is
compute the outputs. Each step's ``info["isolation"]`` records the sandbox mode
(and whether weak isolation was allowed).
"""

from __future__ import annotations

import gzip
import json
import math
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.envs.base import base_info
from pipelines.sandbox import Sandbox, SandboxResult

__all__ = [
    "HumanEvalEnv",
    "HumanEvalProblem",
    "TestReport",
    "default_data_path",
    "default_sandbox",
    "evaluate_solution",
    "load_problems",
]

_DATA_FILE = "HumanEvalPlus-v0.1.10.jsonl.gz"

# Runs inside the sandbox. It sees the solution and the test *inputs* only and
# writes each raw output, JSON-encoded, to outputs.jsonl; the host compares them
# with the expected outputs, which never enter the sandbox.
_HARNESS = r"""
import copy
import json
import os


_BIG = 10**4000  # json writes ints via str(), limited to 4300 digits


def _enc(x):
    # Subclasses become their plain base type (no custom __eq__ survives).
    if x is None or isinstance(x, bool):
        return None if x is None else bool(x)
    if isinstance(x, str):
        return str.__str__(x)
    if isinstance(x, int):
        x = int.__int__(x)
        return x if -_BIG < x < _BIG else {"$": "int", "v": hex(x)}
    if isinstance(x, float):
        return float.__float__(x)
    if isinstance(x, complex):
        return {"$": "complex", "v": [x.real, x.imag]}
    if isinstance(x, list):
        return [_enc(i) for i in x]
    if isinstance(x, tuple):
        return {"$": "tuple", "v": [_enc(i) for i in x]}
    if isinstance(x, dict):
        return {"$": "dict", "v": [[_enc(k), _enc(v)] for k, v in x.items()]}
    if isinstance(x, (set, frozenset)):
        kind = "set" if isinstance(x, set) else "frozenset"
        return {"$": kind, "v": [_enc(i) for i in x]}
    if isinstance(x, (bytes, bytearray)):
        return {"$": "bytes", "v": bytes(x).hex()}
    if hasattr(type(x), "__index__"):
        return _enc(int(x.__index__()))
    try:
        text = repr(x)[:200]
    except BaseException as exc:  # noqa: BLE001 - an unrepresentable object
        text = f"<unrepresentable: {type(exc).__name__}>"
    return {"$": "opaque", "type": type(x).__name__[:100], "repr": text}


def _main():
    spec = json.load(open("spec.json"))
    with open("inputs.json") as fh:
        inputs = json.load(fh)
    out = open("outputs.jsonl", "w")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    ns = {"__name__": "solution"}
    try:
        with open("solution.py") as fh:
            src = fh.read()
        exec(compile(src, "solution.py", "exec"), ns)
        fn = ns[spec["entry_point"]]
    except BaseException as exc:  # noqa: BLE001 - report any failure to load
        out.write(json.dumps({"load_error": f"{type(exc).__name__}: {exc}"[:500]}))
        out.write("\n")
        out.close()
        return
    for i, inp in enumerate(inputs):
        try:
            rec = {"i": i, "out": _enc(fn(*copy.deepcopy(inp)))}
            line = json.dumps(rec)
        except BaseException as exc:  # noqa: BLE001 - a crash fails this input
            line = json.dumps({"i": i, "error": f"{type(exc).__name__}: {exc}"[:300]})
        out.write(line + "\n")
        out.flush()
    out.close()


_main()
"""

_OUTPUTS = "outputs.jsonl"


class _Opaque:
    """An output the harness could only describe: equal to nothing but itself."""

    __slots__ = ("repr", "type")

    def __init__(self, type_: str, text: str) -> None:
        self.type = type_
        self.repr = text

    def __repr__(self) -> str:
        return self.repr


def _decode(x: Any) -> Any:
    """Inverse of the harness's ``_enc`` (raises on a malformed value)."""
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if isinstance(x, list):
        return [_decode(i) for i in x]
    if not isinstance(x, dict) or "$" not in x:
        raise ValueError(f"malformed output value {str(x)[:80]}")
    kind, v = x["$"], x.get("v")
    if kind == "tuple":
        return tuple(_decode(i) for i in v)
    if kind == "dict":
        return {_decode(k): _decode(val) for k, val in v}
    if kind == "set":
        return {_decode(i) for i in v}
    if kind == "frozenset":
        return frozenset(_decode(i) for i in v)
    if kind == "int":
        return int(v, 16)
    if kind == "complex":
        return complex(float(v[0]), float(v[1]))
    if kind == "bytes":
        return bytes.fromhex(v)
    if kind == "opaque":
        return _Opaque(str(x.get("type")), str(x.get("repr")))
    raise ValueError(f"unknown output kind {str(kind)[:40]!r}")


def _poly(xs: list, x: float) -> float:
    return sum(c * math.pow(x, i) for i, c in enumerate(xs))


def _is_floats(x: Any) -> bool:
    if isinstance(x, float):
        return True
    if isinstance(x, (list, tuple)) and x:
        return all(isinstance(i, float) for i in x)
    return False


def _close(out: Any, exp: Any, atol: float) -> bool:
    if type(out) is not type(exp):
        return False
    if isinstance(exp, (list, tuple)):
        return len(out) == len(exp) and all(
            _close(o, e, atol) for o, e in zip(out, exp)
        )
    if isinstance(exp, float):
        if math.isnan(exp):
            return math.isnan(out)
        return abs(out - exp) <= atol + 1e-7 * abs(exp)
    return bool(out == exp)


def _check(entry: str, out: Any, exp: Any, inp: list, atol: float) -> bool:
    """EvalPlus's comparison, on the host, of one decoded output."""
    try:
        if entry == "find_zero":
            return bool(abs(_poly(*inp, out)) <= atol)
        if atol == 0 and _is_floats(exp):
            atol = 1e-6
        if bool(out == exp):
            return True
        return atol != 0 and _close(out, exp, atol)
    except (TypeError, ValueError, OverflowError, RecursionError, ArithmeticError):
        return False


def _repr(x: Any) -> str:
    try:
        return repr(x)[:200]
    except (ValueError, RecursionError) as exc:
        return f"<unrepresentable {type(x).__name__}: {exc}>"[:200]


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


@dataclass
class _Outputs:
    """What the sandbox reported: one entry per input, or why there is none."""

    # per input: ("ok", encoded output) | ("error", message) | None (no line)
    results: list[tuple[str, Any] | None]
    problem: str  # a load error or a tampered output channel; "" when fine
    res: SandboxResult

    def why_missing(self) -> str:
        if self.res.timed_out:
            return "timed out"
        if self.res.disk_exceeded:
            return "working directory over its size cap"
        return f"exit status {self.res.returncode}"


def _parse_outputs(data: bytes, n: int) -> tuple[list[tuple[str, Any] | None], str]:
    results: list[tuple[str, Any] | None] = [None] * n
    for raw in data.splitlines():
        try:
            rec = json.loads(raw)
        except (ValueError, RecursionError):
            continue  # a line cut by a kill or the size cap
        if not isinstance(rec, dict):
            return results, "malformed output channel"
        if "load_error" in rec:
            return results, str(rec["load_error"])[:500]
        i = rec.get("i")
        if type(i) is not int or not 0 <= i < n:
            return results, f"malformed output channel (index {str(i)[:20]})"
        if results[i] is not None:
            return results, f"tampered output channel (input {i} reported twice)"
        if "out" in rec:
            results[i] = ("ok", rec["out"])
        else:
            results[i] = ("error", str(rec.get("error"))[:300])
    return results, ""


def _run_solution(
    sandbox: Sandbox, problem: HumanEvalProblem, program: str, inputs: list
) -> _Outputs:
    """Run ``program`` on ``inputs`` in the sandbox; collect raw outputs."""
    files: dict[str, str | bytes] = {
        "solution.py": program,
        "inputs.json": json.dumps(inputs),
        "spec.json": json.dumps({"entry_point": problem.entry_point}),
    }
    res = sandbox.run_python(_HARNESS, files=files, read_files=(_OUTPUTS,))
    results, problem_msg = _parse_outputs(res.files.get(_OUTPUTS, b""), len(inputs))
    return _Outputs(results, problem_msg, res)


def _judge(
    problem: HumanEvalProblem, inputs: list, expected: list, got: _Outputs
) -> tuple[list[tuple[bool, str, Any]], str]:
    """Compare outputs with ``expected`` on the host.

    Returns ``[(ok, error, decoded output), ...]`` up to and including the first
    failure, and the error of the run as a whole (``""`` when none).
    """
    if got.problem:
        return [], got.problem
    verdicts: list[tuple[bool, str, Any]] = []
    for i, (inp, exp) in enumerate(zip(inputs, expected)):
        r = got.results[i]
        if r is None:
            verdicts.append((False, f"no output ({got.why_missing()})", None))
            break
        kind, raw = r
        if kind == "error":
            verdicts.append((False, str(raw), None))
            break
        try:
            out = _decode(raw)
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            verdicts.append((False, f"undecodable output: {exc}"[:300], None))
            break
        ok = _check(problem.entry_point, out, exp, inp, problem.atol)
        verdicts.append((ok, "" if ok else f"wrong output: got {_repr(out)}", out))
        if not ok:
            break
    return verdicts, ""


class _GroundTruth:
    """Canonical outputs per problem, computed in the sandbox, cached on disk.

    The cache holds the harness's JSON encoding (no pickle); values are
    decoded on load.
    """

    def __init__(self, cache_dir: Path, sandbox: Sandbox) -> None:
        self.cache_dir = cache_dir
        # Some canonical outputs are large (HumanEval/15 yields ~100 MB).
        self.sandbox = Sandbox(
            wall_time=max(sandbox.wall_time, 60.0),
            memory_mb=max(sandbox.memory_mb, 4096),
            max_file_mb=1024,
            max_disk_mb=max(sandbox.max_disk_mb, 1024),
            allow_weak_isolation=sandbox.allow_weak_isolation,
            python=sandbox.python,
        )
        self._mem: dict[str, tuple[list, list]] = {}

    def get(self, problem: HumanEvalProblem) -> tuple[list, list]:
        if problem.task_id in self._mem:
            return self._mem[problem.task_id]
        fname = problem.task_id.replace("/", "_") + ".v2.json"
        path = self.cache_dir / fname
        if path.is_file():
            encoded = json.loads(path.read_text())
        else:
            program = problem.prompt + problem.canonical_solution
            inputs = problem.base_input + problem.plus_input
            got = _run_solution(self.sandbox, problem, program, inputs)
            bad = got.problem or next(
                (
                    f"input {i}: {r[1] if r else 'no output (' + got.why_missing() + ')'}"
                    for i, r in enumerate(got.results)
                    if r is None or r[0] != "ok"
                ),
                "",
            )
            if bad:
                raise RuntimeError(
                    f"canonical solution of {problem.task_id} failed to run: {bad}; "
                    f"stderr: {got.res.stderr[-500:]}"
                )
            nb = len(problem.base_input)
            outs = [r[1] for r in got.results if r is not None]
            encoded = {"base": outs[:nb], "plus": outs[nb:]}
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{secrets.token_hex(4)}")
            tmp.write_text(json.dumps(encoded))
            tmp.replace(path)
        out = (
            [_decode(x) for x in encoded["base"]],
            [_decode(x) for x in encoded["plus"]],
        )
        self._mem[problem.task_id] = out
        return out


def _default_cache() -> Path:
    return Path.home() / ".cache" / "r2vcal" / "humanevalplus" / "v0.1.10"


def default_sandbox() -> Sandbox:
    """The sandbox HumanEval solutions run in (30 s, 2 GB memory, 512 MB files)."""
    # Outputs are written to a file in the sandbox (HumanEval/15: ~100 MB).
    return Sandbox(wall_time=30.0, memory_mb=2048, max_file_mb=512, max_disk_mb=512)


def evaluate_solution(
    problem: HumanEvalProblem,
    program: str,
    *,
    suite: str = "base",
    sandbox: Sandbox | None = None,
    cache_dir: str | Path | None = None,
) -> TestReport:
    """Run a full program on a problem's base or plus tests in the sandbox.

    The program runs on the test inputs only and returns its raw outputs; the
    expected outputs never enter the sandbox and the verdict is computed here.

    Parameters
    ----------
    problem : HumanEvalProblem
    program : str
        Source defining ``problem.entry_point``.
    suite : {"base", "plus"}, default="base"
        Which test inputs to run.
    sandbox : Sandbox, optional
        Limits; default 30 s wall time, 2 GiB memory, 512 MiB of outputs.
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
    sandbox = sandbox or default_sandbox()
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
    got = _run_solution(sandbox, problem, program, inputs)
    verdicts, problem_msg = _judge(problem, inputs, expected, got)
    n_ok = sum(ok for ok, _, _ in verdicts)
    passed = not problem_msg and n_ok == len(inputs)
    error = problem_msg or next((e for ok, e, _ in verdicts if not ok), "")
    return TestReport(
        passed, n_ok, len(inputs), error, got.res.timed_out, got.res.wall_time
    )


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
        self.sandbox = sandbox or default_sandbox()
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
        info = base_info(self._t, isolation=self.sandbox.isolation())
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
        got = _run_solution(self.sandbox, problem, self._program(), inputs)
        if got.problem:
            return f"Error: {got.problem}", True
        lines, err = [], False
        for inp, exp, r in zip(inputs, expected, got.results):
            call = f"{problem.entry_point}({', '.join(repr(a) for a in inp)})"[:200]
            if r is None:
                why = got.why_missing()
                return f"Execution failed ({why}).\n{got.res.stderr[-400:]}", True
            if r[0] == "error":
                err = True
                lines.append(f"{call} -> raised {r[1]}")
                continue
            verdicts, _ = _judge(problem, [inp], [exp], _Outputs([r], "", got.res))
            ok, _, out = verdicts[0]
            mark = "ok" if ok else f"FAIL (expected {_repr(exp)})"
            lines.append(f"{call} -> {_repr(out)}  {mark}")
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
