"""Small helpers shared by the resource classes."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp


def timestamp(msg: Any, name: str) -> _dt.datetime | None:
    """A timezone-aware UTC datetime for a Timestamp field, or None when it is unset."""
    if not msg.HasField(name):
        return None
    ts: Timestamp = getattr(msg, name)
    if ts.seconds == 0 and ts.nanos == 0:
        return None
    when: _dt.datetime = ts.ToDatetime(tzinfo=_dt.timezone.utc)
    return when


def to_pandas(rows: Iterable[Mapping[str, Any]], columns: Iterable[str]) -> Any:
    """A DataFrame with the given columns (pandas is imported only here)."""
    try:
        import pandas as pd
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("to_pandas() needs pandas: pip install 'mlgw[pandas]'") from e
    return pd.DataFrame(list(rows), columns=list(columns))


def progress_class() -> Any:
    """tqdm's class for progress displays: the notebook widget in Jupyter, text elsewhere."""
    # tqdm.auto picks the notebook widget in Jupyter, but only works well with ipywidgets
    # installed; without them it warns and falls back to text, so choose text directly.
    try:
        import ipywidgets  # noqa: F401
        from tqdm.auto import tqdm
    except ImportError:
        from tqdm import tqdm
    return tqdm
