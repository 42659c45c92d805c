"""Command lines derived from the pipelines' config dataclasses (package-internal)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["config_from_args"]


def config_from_args(args: argparse.Namespace, cls: type) -> Any:
    """Build a config dataclass from parsed args, skipping unset (``None``) ones."""
    return cls(**{k: v for k, v in vars(args).items() if v is not None})
