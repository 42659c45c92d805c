"""MkDocs hooks: API pages for every public module, executed examples, checks.

* ``on_config`` builds the "API reference" navigation from the source tree, so
  a module added to ``r2vcal/`` or ``pipelines/`` gets a page without anyone
  editing ``mkdocs.yml``.
* ``on_files`` writes those API pages (one ``::: module`` directive each) and
  runs every ``docs/examples/*.py`` in a subprocess with matplotlib's Agg
  backend. The PNGs they save become site files under ``figures/`` and their
  standard output is pasted where a page says ``<!-- example-output: NAME -->``.
  An example that raises (or runs past ``R2VCAL_DOCS_EXAMPLE_TIMEOUT`` seconds,
  default 300) fails the build.
* ``on_post_build`` checks that every name in every documented module's
  ``__all__`` got an anchor in the built site, so no public name goes missing.
"""

from __future__ import annotations

import ast
import logging
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.r2vcal")

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("r2vcal", "pipelines")
EXAMPLES = ROOT / "docs" / "examples"
_state: dict[str, Any] = {}


# ----------------------------------------------------------------- modules
def public_modules() -> list[str]:
    """Dotted names of the public modules of r2vcal and pipelines, sorted."""
    mods = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            # only real packages (every folder has an __init__.py)
            if not all(
                (ROOT.joinpath(*parts[:i]) / "__init__.py").is_file()
                for i in range(1, len(parts))
            ):
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if any(p.startswith("_") for p in parts):
                continue
            mods.append(".".join(parts))
    return sorted(set(mods), key=lambda m: (m.split(".")[0] != "r2vcal", m))


def module_file(mod: str) -> Path:
    base = ROOT.joinpath(*mod.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def module_all(mod: str) -> list[str] | None:
    """The literal ``__all__`` of a module, read without importing it."""
    tree = ast.parse(module_file(mod).read_text(encoding="utf-8"))
    for node in tree.body:
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets = [node.target]
        for t in targets:
            if isinstance(t, ast.Name) and t.id == "__all__":
                return [str(v) for v in ast.literal_eval(node.value)]
    return None


def reexports(mod: str) -> dict[str, str]:
    """Names of a package's ``__all__`` imported from its submodules."""
    tree = ast.parse(module_file(mod).read_text(encoding="utf-8"))
    out = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                out[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return out


def api_page_path(mod: str) -> str:
    return f"api/{mod}.md"


def api_page(mod: str) -> str:
    names = module_all(mod) or []
    is_pkg = module_file(mod).name == "__init__.py"
    if not is_pkg:
        return f"::: {mod}\n"
    # A package page documents its own objects and links the re-exported ones
    # to their home module (rendering them twice would duplicate anchors).
    imported = reexports(mod)
    own = [n for n in names if n not in imported]
    lines = [f"::: {mod}", "    options:", "      filters: []"]
    lines.append("      members:" + ("" if own else " false"))
    lines += [f"        - {n}" for n in own]
    linked = [n for n in names if n in imported]
    if linked:
        lines += ["", "Re-exported names:", "", "| name | defined in |", "|---|---|"]
        for n in linked:
            target = imported[n]
            home = target.rsplit(".", 1)[0]
            lines.append(f"| [`{mod}.{n}`][{target}] | `{home}` |")
    return "\n".join(lines) + "\n"


def on_config(config: Any, **kwargs: Any) -> Any:
    mods = public_modules()
    _state["modules"] = mods
    api = [{"Overview": "api/index.md"}]
    for pkg in PACKAGES:
        api.append(
            {pkg: [{m: api_page_path(m)} for m in mods if m.split(".")[0] == pkg]}
        )
    nav = config.nav or []
    for i, item in enumerate(nav):
        if isinstance(item, dict) and "API reference" in item:
            nav[i] = {"API reference": api}
            break
    else:
        nav.append({"API reference": api})
    config.nav = nav
    return config


# ---------------------------------------------------------------- examples
def _run_example(path: Path, out: Path) -> tuple[Path, int, str, str, float]:
    env = dict(os.environ)
    env.update(MPLBACKEND="Agg", R2VCAL_FIGURES=str(out), PYTHONHASHSEED="0")
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), env.get("PYTHONPATH")])
    )
    timeout = float(os.environ.get("R2VCAL_DOCS_EXAMPLE_TIMEOUT", "300"))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, str(path)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        code, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        code, stdout = -1, exc.stdout or ""
        stderr = f"timed out after {timeout:.0f} s"
        stdout = stdout.decode() if isinstance(stdout, bytes) else stdout
    return path, code, stdout, stderr, time.perf_counter() - t0


def run_examples() -> tuple[Path, dict[str, str]]:
    out = Path(tempfile.mkdtemp(prefix="r2vcal-docs-figures-"))
    scripts = sorted(EXAMPLES.glob("*.py"))
    jobs = int(os.environ.get("R2VCAL_DOCS_JOBS", "2"))
    outputs: dict[str, str] = {}
    failed = []
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for path, code, stdout, stderr, secs in pool.map(
            lambda p: _run_example(p, out), scripts
        ):
            log.info("example %s: exit %d in %.1f s", path.name, code, secs)
            outputs[path.stem] = stdout.rstrip()
            if code != 0:
                failed.append(f"{path.name} (exit {code}):\n{stderr[-3000:]}")
    if failed:
        raise PluginError("docs example failed: " + "\n\n".join(failed))
    return out, outputs


def on_files(files: Files, config: Any, **kwargs: Any) -> Files:
    for mod in _state.get("modules") or public_modules():
        files.append(File.generated(config, api_page_path(mod), content=api_page(mod)))
    if os.environ.get("R2VCAL_DOCS_SKIP_EXAMPLES") == "1":
        log.warning("R2VCAL_DOCS_SKIP_EXAMPLES=1: examples not executed")
        _state["outputs"] = {}
        return files
    fig_dir, outputs = run_examples()
    _state["outputs"] = outputs
    for png in sorted(fig_dir.glob("*.png")):
        files.append(
            File.generated(config, f"figures/{png.name}", abs_src_path=str(png))
        )
    return files


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    outputs = _state.get("outputs", {})
    marker = "<!-- example-output: "
    while marker in markdown:
        start = markdown.index(marker)
        end = markdown.index("-->", start)
        name = markdown[start + len(marker) : end].strip()
        if name not in outputs and os.environ.get("R2VCAL_DOCS_SKIP_EXAMPLES") != "1":
            raise PluginError(f"{page.file.src_uri}: no example named {name!r}")
        text = outputs.get(name, "(examples not executed)")
        block = f'```text title="output of {name}.py"\n{text}\n```'
        markdown = markdown[:start] + block + markdown[end + 3 :]
    return markdown


# ------------------------------------------------------------------ checks
def on_post_build(config: Any, **kwargs: Any) -> None:
    site = Path(config.site_dir)
    missing = []
    for mod in _state.get("modules") or public_modules():
        names = module_all(mod)
        if not names:
            continue
        html_path = site / "api" / mod / "index.html"
        if not html_path.is_file():
            html_path = site / "api" / f"{mod}.html"
        html = html_path.read_text(encoding="utf-8") if html_path.is_file() else ""
        imported = reexports(mod) if module_file(mod).name == "__init__.py" else {}
        for n in names:
            anchor = f'id="{mod}.{n}"'
            linked = f"<code>{mod}.{n}</code>" in html
            if anchor not in html and not (n in imported and linked):
                missing.append(f"{mod}.{n}")
    if missing:
        raise PluginError(
            "public names (in __all__) missing from the API reference: "
            + ", ".join(missing)
        )
