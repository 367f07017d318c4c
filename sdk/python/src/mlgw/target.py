"""Targets: where work runs, and what each supports."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from . import _display
from ._common import to_pandas
from ._proto.mlgw.v1 import targets_pb2

__all__ = ["FEATURES", "Target", "TargetList"]

#: Feature names as the SDK spells them (``Target.features``, ``Target.supports``).
FEATURES = (
    "training",
    "training_logs",
    "training_cancel",
    "serving",
    "serving_update",
    "canary",
    "tuning",
    "batch",
)


def _feature_name(value: int) -> str:
    try:
        name: str = targets_pb2.Feature.Name(value)
        return name.removeprefix("FEATURE_").lower()
    except ValueError:  # a feature newer than these stubs
        return f"feature_{value}"


@dataclass(frozen=True)
class Target:
    """A target the operator configured: its plugin, features, grants and health."""

    name: str
    is_default: bool
    plugin: str
    plugin_version: str
    description: str
    features: tuple[str, ...]
    grants: tuple[str, ...]
    healthy: bool
    health_message: str

    @classmethod
    def from_proto(cls, t: targets_pb2.Target) -> Target:
        return cls(
            name=t.name,
            is_default=t.is_default,
            plugin=t.plugin,
            plugin_version=t.plugin_version,
            description=t.description,
            features=tuple(_feature_name(f) for f in t.features),
            grants=tuple(t.grants),
            healthy=t.health == targets_pb2.TARGET_HEALTH_HEALTHY,
            health_message=t.health_message,
        )

    def supports(self, feature: str) -> bool:
        """Whether the target supports a feature: one of :data:`FEATURES` (``"canary"``,
        ``"serving_update"``, ...; dashes and case are ignored)."""
        return feature.lower().replace("-", "_").removeprefix("feature_") in self.features

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["health"] = "healthy" if self.healthy else "unhealthy"
        return d

    def _repr_html_(self) -> str:
        return _display.record(f"Target {self.name}", self.to_dict())


class TargetList(list[Target]):
    """Targets and what each supports. ``to_pandas()`` gives a DataFrame (one boolean column
    per feature); Jupyter shows a table."""

    COLUMNS = ("name", "is_default", "plugin", "plugin_version", "features", "grants", "health")

    @property
    def default(self) -> Target | None:
        """The gateway's default target."""
        return next((t for t in self if t.is_default), None)

    def to_pandas(self) -> Any:
        rows = []
        for t in self:
            row = t.to_dict()
            row.update({f: f in t.features for f in FEATURES})
            rows.append(row)
        columns = [*self.COLUMNS, "description", "health_message", *FEATURES]
        return to_pandas(rows, columns)

    def _repr_html_(self) -> str:
        return _display.table([t.to_dict() for t in self], self.COLUMNS, f"{len(self)} targets")
