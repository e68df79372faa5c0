"""The numpy dtype of each numeric dtype name a reader reports (base.NUMERIC_DTYPE_NAMES).

Separate from base.py so that the reader protocol, the tensor names and the format facts
load without numpy (the daemon's main process imports them); the readers import this.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from ckptwatch.formats.base import NUMERIC_DTYPE_NAMES


def _numeric_dtypes() -> dict[str, np.dtype]:
    table = {}
    for name in sorted(NUMERIC_DTYPE_NAMES):
        try:
            table[name] = np.dtype(name)
        except TypeError:  # bfloat16, float8_*: numpy has no such type, ml_dtypes does
            if hasattr(ml_dtypes, name):
                table[name] = np.dtype(getattr(ml_dtypes, name))
    return table


NUMERIC_DTYPES: dict[str, np.dtype] = _numeric_dtypes()
