"""Number formatting shared by the report's tables."""

from __future__ import annotations

import math
from typing import Any


def fmt(value: Any, spec: str) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-"
    return "∞" if value == math.inf else format(value, spec)
