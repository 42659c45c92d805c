"""The module layers of r2vcal and pipelines, read from the import statements.

Every module sits one row above the highest module it imports, so imports only
point down a column, and the pipelines column may import from the r2vcal
column but never the other way (``tests/test_architecture.py`` enforces both).
Subpackages (``r2vcal/serve``, ``pipelines/envs``) are drawn as one box.
"""

import ast
import functools
import os
import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

ROOT = Path(__file__).resolve().parents[2]
out = Path(os.environ.get("R2VCAL_FIGURES", "."))


def node(path: Path, pkg: str) -> str:
    """``r2vcal/serve/app.py`` -> ``serve/``; ``r2vcal/router.py`` -> ``router``."""
    parts = path.relative_to(ROOT / pkg).with_suffix("").parts
    if len(parts) > 1:
        return parts[0] + "/"
    return pkg if parts[0] == "__init__" else parts[0]


def graph(pkg: str) -> dict[str, set[str]]:
    """Imports between a package's modules (subpackages collapsed)."""
    files = [
        p
        for p in sorted((ROOT / pkg).rglob("*.py"))
        if "tasks" not in p.relative_to(ROOT / pkg).parts
    ]
    names = {".".join(p.relative_to(ROOT).with_suffix("").parts): p for p in files}
    names = {k.removesuffix(".__init__"): v for k, v in names.items()}
    g: dict[str, set[str]] = {node(p, pkg): set() for p in files}
    for p in files:
        src = node(p, pkg)
        for n in ast.walk(ast.parse(p.read_text())):
            targets = []
            if isinstance(n, ast.Import):
                targets = [a.name for a in n.names]
            elif isinstance(n, ast.ImportFrom) and n.module and not n.level:
                targets = [f"{n.module}.{a.name}" for a in n.names] + [n.module]
            for t in targets:
                if t in names and (dst := node(names[t], pkg)) != src:
                    g[src].add(dst)
                    break
    return g


def layers(g: dict[str, set[str]]) -> list[list[str]]:
    @functools.cache
    def level(m: str) -> int:
        return 0 if not g[m] else 1 + max(level(n) for n in g[m])

    rows: list[list[str]] = [[] for _ in range(1 + max(map(level, g)))]
    for m in sorted(g):
        rows[level(m)].append(m)
    return rows


fig, ax = plt.subplots(figsize=(11, 8.5))
columns = {
    "r2vcal": (0.02, "#e8f0fb", "#2b5d9c"),
    "pipelines": (0.53, "#eef6ee", "#3c7a3c"),
}
width = 0.45
for pkg, (x0, face, edge) in columns.items():
    rows = layers(graph(pkg))
    h = 0.86 / len(rows)
    for i, mods in enumerate(rows):
        y = 0.04 + i * h
        ax.add_patch(
            FancyBboxPatch(
                (x0, y + 0.008),
                width,
                h - 0.016,
                boxstyle="round,pad=0.004",
                fc=face,
                ec=edge,
                lw=1.2,
            )
        )
        text = "\n".join(textwrap.wrap("  ·  ".join(mods), 62))
        ax.text(x0 + width / 2, y + h / 2, text, ha="center", va="center", fontsize=8.5)
        ax.text(
            x0 - 0.004,
            y + h / 2,
            str(i),
            ha="right",
            va="center",
            fontsize=7,
            color="#777",
        )
    ax.text(
        x0 + width / 2,
        0.945,
        f"{pkg}/",
        ha="center",
        fontsize=14,
        weight="bold",
        color=edge,
    )
    ax.add_patch(
        FancyArrowPatch(
            (x0 + width + 0.012, 0.88),
            (x0 + width + 0.012, 0.06),
            arrowstyle="-|>",
            mutation_scale=14,
            color=edge,
        )
    )
ax.add_patch(
    FancyArrowPatch(
        (0.53, 0.985), (0.47, 0.985), arrowstyle="-|>", mutation_scale=16, color="#a33"
    )
)
ax.text(
    0.5,
    1.0,
    "pipelines may import r2vcal; r2vcal never imports pipelines",
    ha="center",
    va="bottom",
    fontsize=9,
    color="#a33",
)
ax.set_xlim(0, 1.0)
ax.set_ylim(0, 1.03)
ax.axis("off")
ax.set_title(
    "Import layers (row = 1 + the highest row imported; arrows: allowed import direction)",
    fontsize=10,
    pad=18,
)
fig.savefig(out / "architecture.png", dpi=110, bbox_inches="tight")
for pkg in columns:
    for i, mods in enumerate(layers(graph(pkg))):
        print(f"{pkg:9s} row {i}: {', '.join(mods)}")
