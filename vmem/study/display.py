"""How the report shows numbers: counts with separators, shares as percentages, others in 3-4
significant digits."""

from __future__ import annotations

import pandas as pd


def show(frame: pd.DataFrame) -> pd.DataFrame:
    """Display strings: counts with separators, shares as percentages, others 3-4 digits."""
    shown = pd.DataFrame(index=frame.index)
    for column in frame.columns:
        values = frame[column]
        if "share" in column or column in ("score_0", "score_at_least_half", "score_1",
                                            "agreement"):
            shown[column] = [percent(v) for v in values]
        elif column in ("step", "cheap_step", "step_first", "step_last", "points"):
            shown[column] = ["–" if pd.isna(v) else str(int(v)) for v in values]
        elif pd.api.types.is_integer_dtype(values) or column == "params":
            shown[column] = [count(v) for v in values]
        elif pd.api.types.is_float_dtype(values):
            shown[column] = [number(v) for v in values]
        else:
            shown[column] = values.astype(str)
    return shown.reset_index(drop=True)


def count(v) -> str:
    return "–" if v is None or pd.isna(v) else f"{int(v):,}"


def percent(v: float) -> str:
    return "–" if pd.isna(v) else f"{v:.3%}"


def number(v: float) -> str:
    if pd.isna(v):
        return "–"
    return f"{v:.3e}" if v != 0 and not 1e-3 <= abs(v) < 1e5 else f"{v:.4g}"
