"""Where the recorded real API responses live: ``../shared/real-responses`` beside the checkout
(as CI lays it out), or ``TOKENMETRY_REAL_RESPONSES``."""

from __future__ import annotations

import os
from pathlib import Path

_CANDIDATES = [
    os.environ.get("TOKENMETRY_REAL_RESPONSES"),
    str(Path(__file__).resolve().parents[2] / "shared" / "real-responses"),
    "/work/shared/real-responses",
]

REAL_RESPONSES = next((Path(c) for c in _CANDIDATES if c and Path(c).is_dir()), Path(_CANDIDATES[1]))
