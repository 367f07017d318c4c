"""HTML for Jupyter: jobs, endpoints, targets and their lists render as small tables."""

from __future__ import annotations

import datetime as _dt
import html
from collections.abc import Mapping, Sequence
from typing import Any

_COLOURS = {
    "pending": "#8a6d00",
    "creating": "#8a6d00",
    "updating": "#8a6d00",
    "running": "#0b5cad",
    "succeeded": "#1a7f37",
    "ready": "#1a7f37",
    "degraded": "#bc4c00",
    "failed": "#cf222e",
    "cancelled": "#6e7781",
    "deleted": "#6e7781",
    "healthy": "#1a7f37",
    "unhealthy": "#cf222e",
}

_TABLE = 'style="border-collapse:collapse;font-size:0.9em;text-align:left"'
_CELL = 'style="padding:2px 8px;border-bottom:1px solid #ddd;text-align:left"'


def _fmt(key: str, value: Any) -> str:
    if value is None or value == "" or value == ():
        return ""
    if isinstance(value, _dt.datetime):
        text = value.strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    elif isinstance(value, (list, tuple)):
        text = ", ".join(str(v) for v in value)
    elif isinstance(value, Mapping):
        text = ", ".join(f"{k}={v}" for k, v in value.items())
    else:
        text = str(value)
    escaped = html.escape(text)
    if key in ("state", "health") and text in _COLOURS:
        return f'<b style="color:{_COLOURS[text]}">{escaped}</b>'
    if key == "id":
        return f"<code>{escaped}</code>"
    return escaped


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], title: str = "") -> str:
    """Rows as an HTML table, one column per key."""
    caption = f"<caption style='text-align:left'>{html.escape(title)}</caption>" if title else ""
    head = "".join(f"<th {_CELL}>{html.escape(c)}</th>" for c in columns)
    if not rows:
        body = f"<tr><td {_CELL} colspan='{len(columns)}'><i>none</i></td></tr>"
    else:
        body = "".join(
            "<tr>" + "".join(f"<td {_CELL}>{_fmt(c, r.get(c))}</td>" for c in columns) + "</tr>"
            for r in rows
        )
    return f"<table {_TABLE}>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def record(title: str, fields: Mapping[str, Any]) -> str:
    """One object as a two-column (field, value) table; empty fields are left out."""
    body = "".join(
        f"<tr><th {_CELL}>{html.escape(k)}</th><td {_CELL}>{_fmt(k, v)}</td></tr>"
        for k, v in fields.items()
        if v not in (None, "", (), {})
    )
    return (
        f"<table {_TABLE}><caption style='text-align:left'><b>{html.escape(title)}</b>"
        f"</caption><tbody>{body}</tbody></table>"
    )
