"""attnzoo's environment switches, read in one way: unset, "", "0", "false" and "no" mean off."""

from __future__ import annotations

import os


def flag(name: str) -> bool:
    """Whether the environment switch ``name`` is on."""
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")
