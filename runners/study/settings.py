"""What a study was created with: its objectives, space and trial count.

`StudySettings` is stored on the study as the user attr ``ATTR_SETTINGS`` when the
study is created and read back by every worker and on ``--resume``, so a study keeps
the settings it was created with wherever its trials run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from clusterprobe.runners.space import Space, parse_space
from clusterprobe.tracker.conventions import SUMMARY_METRICS
from clusterprobe.tracker.errors import UsageError, did_you_mean

ATTR_SETTINGS = "clusterprobe"  # study user attr: JSON-able StudySettings
DIRECTIONS = {"max": "maximize", "maximize": "maximize", "min": "minimize", "minimize": "minimize"}


def parse_objectives(specs: list[str] | tuple[str, ...] | None) -> list[tuple[str, str]]:
    """``["best_ami:max", "best_probe_acc"]`` -> [(name, "maximize"), ...]; default best_ami:max."""
    out: list[tuple[str, str]] = []
    for spec in specs or ["best_ami:max"]:
        name, _, direction = spec.partition(":")
        direction = direction or "max"
        if direction.lower() not in DIRECTIONS:
            raise UsageError(f"--objective {spec!r}: direction must be max or min")
        if name not in SUMMARY_METRICS:
            hint = did_you_mean(name, SUMMARY_METRICS, n=2)
            raise UsageError(
                f"--objective {spec!r}: unknown metric {name!r}{hint}; "
                f"choose from {', '.join(SUMMARY_METRICS)}"
            )
        if any(name == n for n, _ in out):
            raise UsageError(f"--objective {name} given twice")
        out.append((name, DIRECTIONS[direction.lower()]))
    return out


@dataclass(frozen=True)
class StudySettings:
    """What a study was created with; stored as a study user attr, read by workers."""

    name: str
    trials: int
    space_text: str
    space_source: str
    objectives: tuple[tuple[str, str], ...]
    quick: bool = False
    pruner: str = "none"
    seed: int | None = None
    study_run_id: str | None = None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> StudySettings:
        data = dict(data)
        data["objectives"] = tuple(tuple(o) for o in data["objectives"])
        return cls(**data)

    def space(self) -> Space:
        return parse_space(self.space_text, self.space_source)


def read_settings(study) -> StudySettings:
    raw = study.user_attrs.get(ATTR_SETTINGS)
    if raw is None:
        raise UsageError(
            f"study {study.study_name!r} was not created by clusterprobe study; nothing to resume"
        )
    return StudySettings.from_json(raw)
