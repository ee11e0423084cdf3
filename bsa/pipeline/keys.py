"""The earliest row of each key: "keep the earliest" for repeated ids (ingest; executor_ray spreads it)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def first_rows(keys: pd.Series) -> np.ndarray:
    """Each row's position of the earliest row holding the same key (a missing key is a key too)."""
    codes, _ = pd.factorize(keys, use_na_sentinel=False)
    earliest = np.full(codes.max() + 1 if len(codes) else 0, len(codes), dtype=np.int64)
    np.minimum.at(earliest, codes, np.arange(len(codes), dtype=np.int64))
    return earliest[codes]
