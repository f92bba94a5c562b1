"""The `clusterprobe study` flags as one value, and the checks they pass before any work."""

from __future__ import annotations

from dataclasses import dataclass

from clusterprobe.tracker.errors import UsageError

PRUNERS = ("none", "median")


@dataclass(frozen=True)
class StudyOptions:
    """The `clusterprobe study` flags, parsed."""

    name: str | None = None
    resume: str | None = None
    trials: int | None = None
    space: str | None = None
    storage: str | None = None
    workers: int = 1
    quick: bool = False
    objectives: tuple[str, ...] = ()
    pruner: str | None = None
    seed: int | None = None
    heartbeat: int = 60
    quiet: bool = False
    register_best: str | None = None  # registered model name for the best trial's model


def validate_options(opts: StudyOptions) -> None:
    if opts.register_best is not None:
        from clusterprobe.tracker.logged_models import check_model_name

        check_model_name(opts.register_best, "--register-best")
    if opts.workers < 1:
        raise UsageError(f"--workers {opts.workers}: must be >= 1")
    if opts.trials is not None and opts.trials < 1:
        raise UsageError(f"--trials {opts.trials}: must be >= 1")
    if opts.heartbeat < 1:
        raise UsageError(f"--heartbeat {opts.heartbeat}: must be >= 1 second")
    if opts.pruner is not None and opts.pruner not in PRUNERS:
        raise UsageError(f"--pruner {opts.pruner!r}: choose from {', '.join(PRUNERS)}")
    if opts.resume is not None:
        given = [
            flag
            for flag, value in (
                ("--space", opts.space),
                ("--objective", opts.objectives),
                ("--pruner", opts.pruner),
                ("--quick", opts.quick),
                ("--name", opts.name if opts.name != opts.resume else None),
            )
            if value
        ]
        if given:
            raise UsageError(
                f"--resume {opts.resume}: {', '.join(given)} cannot change a study; it keeps "
                "the settings it was created with (only --trials, --workers, --seed may change)"
            )
