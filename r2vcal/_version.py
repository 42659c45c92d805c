"""The installed r2vcal version, without importing the package's modules.

:mod:`r2vcal` re-exports it as ``r2vcal.__version__``; :mod:`r2vcal.persist`
writes it into saved routers.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["SOURCE_VERSION", "VERSION", "__version__"]

#: The version in ``pyproject.toml``, used when r2vcal runs from a source tree
#: without being installed.
SOURCE_VERSION = "0.1.0"

try:
    VERSION: str = version("r2vcal")
except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    VERSION = SOURCE_VERSION
__version__ = VERSION
