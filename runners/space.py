"""Search spaces as data: a TOML file over RunConfig fields, suggested define-by-run.

``[fixed]`` sets RunConfig fields for every trial; ``[params.FIELD]`` searches one:
categorical ``choices``, ``type = "int"|"float"`` with ``low``/``high``/``step``/``log``,
and ``when = {FIELD = VALUES}`` for conditional parameters (shell patterns allowed).
`Space.suggest` walks the parameters in file order calling ``trial.suggest_*``, so a
conditional parameter is an ordinary ``if``. Everything is validated once, at parse
time, with one-line UsageErrors; ``runners/default_space.toml`` documents the format.
"""

from __future__ import annotations

import fnmatch
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clusterprobe.runners.config import PRESETS, RunConfig, parse_factors
from clusterprobe.tracker.errors import UsageError, did_you_mean

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

DEFAULT_SPACE = Path(__file__).with_name("default_space.toml")
SEARCHABLE_EXCLUDED = ("extra",)  # dict field: set it in [fixed], not searchable


@dataclass(frozen=True)
class Param:
    """One searched RunConfig field."""

    name: str
    kind: str  # "categorical" | "int" | "float"
    choices: tuple = ()
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    when: tuple[tuple[str, tuple], ...] = ()  # (earlier param, accepted values/patterns)

    def active(self, values: dict[str, Any]) -> bool:
        """True when every condition holds for the values suggested so far."""
        return all(
            name in values and any(_matches(values[name], want) for want in accepted)
            for name, accepted in self.when
        )

    def suggest(self, trial) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(
            self.name, float(self.low), float(self.high), step=self.step, log=self.log
        )


@dataclass(frozen=True)
class Space:
    params: tuple[Param, ...]
    fixed: dict = field(default_factory=dict)  # RunConfig overrides for every trial
    text: str = ""  # the TOML source, stored with the study so --resume reuses it
    source: str = "<space>"

    def suggest(self, trial) -> dict[str, Any]:
        """Define-by-run: suggest each active parameter in file order."""
        values: dict[str, Any] = {}
        for param in self.params:
            if param.active(values):
                values[param.name] = param.suggest(trial)
        return values


def _matches(value: Any, want: Any) -> bool:
    if isinstance(want, str) and isinstance(value, str):
        return fnmatch.fnmatchcase(value, want)
    return value == want and type(value) is type(want)


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(RunConfig)


def _unknown_field(name: str, where: str) -> UsageError:
    valid = [f for f in _field_types() if f not in SEARCHABLE_EXCLUDED]
    hint = did_you_mean(name, valid)
    return UsageError(f"{where}: unknown field {name!r}{hint}; valid fields: {', '.join(valid)}")


def coerce(name: str, value: Any, where: str = "space") -> Any:
    """Convert a TOML / Optuna value to the type of RunConfig field ``name``."""
    types = _field_types()
    if name not in types:
        raise _unknown_field(name, where)
    return _coerce(name, types[name], value, where)


def _coerce(name: str, hint: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if (
        origin in (typing.Union, getattr(__import__("types"), "UnionType", None))
        and type(None) in args
    ):
        if value is None or (isinstance(value, str) and value.lower() in ("", "none")):
            return None
        inner = next(a for a in args if a is not type(None))
        return _coerce(name, inner, value, where)
    bad = UsageError(f"{where}: {name} = {value!r} is not a valid {_type_name(hint)}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise bad
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad
    if hint is str:
        if isinstance(value, str):
            return value
        raise bad
    if origin is tuple:
        if name == "factors" and isinstance(value, (str, int)):
            return parse_factors(str(value))
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise bad
        item = args[0] if args else str
        out = []
        for v in value:
            if item is int and isinstance(v, str):
                try:
                    v = int(v)
                except ValueError:
                    raise bad from None
            out.append(_coerce(name, item, v, where))
        return tuple(out)
    if origin is dict or hint is dict:
        if isinstance(value, dict):
            return dict(value)
        raise bad
    return value


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


_PARAM_KEYS = {"type", "choices", "low", "high", "step", "log", "when", "help"}


def parse_space(text: str, source: str = "<space>") -> Space:
    """Parse and validate a search-space TOML text. Raises UsageError naming the problem."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"--space {source}: not valid TOML: {err}") from None
    unknown = set(doc) - {"fixed", "params"}
    if unknown:
        raise UsageError(
            f"--space {source}: unknown top-level key(s) {sorted(unknown)}; "
            "use [fixed] and [params.FIELD]"
        )
    fixed_raw = doc.get("fixed", {})
    params_raw = doc.get("params", {})
    if not isinstance(fixed_raw, dict) or not isinstance(params_raw, dict):
        raise UsageError(f"--space {source}: [fixed] and [params] must be tables")
    fixed = {k: coerce(k, v, f"--space {source} [fixed]") for k, v in fixed_raw.items()}
    params: list[Param] = []
    for name, spec in params_raw.items():
        params.append(_parse_param(name, spec, params, f"--space {source} [params.{name}]"))
    space = Space(params=tuple(params), fixed=fixed, text=text, source=source)
    _check_configs(space)
    return space


def load_space(path: str | os.PathLike | None = None) -> Space:
    path = Path(path) if path is not None else DEFAULT_SPACE
    try:
        text = path.read_text()
    except OSError as err:
        raise UsageError(f"--space {str(path)!r}: cannot read ({err.strerror})") from None
    return parse_space(text, str(path))


def _parse_param(name: str, spec: Any, earlier: list[Param], where: str) -> Param:
    types = _field_types()
    if name not in types or name in SEARCHABLE_EXCLUDED:
        raise _unknown_field(name, where.rsplit(" ", 1)[0])
    if not isinstance(spec, dict):
        raise UsageError(f"{where}: must be a table with choices, or type/low/high")
    extra = set(spec) - _PARAM_KEYS
    if extra:
        raise UsageError(f"{where}: unknown key(s) {sorted(extra)}; valid: {sorted(_PARAM_KEYS)}")
    kind = spec.get("type", "categorical" if "choices" in spec else None)
    if kind not in ("categorical", "int", "float"):
        raise UsageError(
            f"{where}: type {kind!r}; use choices = [...] or type = 'int' | 'float' with low/high"
        )
    when = _parse_when(spec.get("when", {}), earlier, where)
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise UsageError(f"{where}: choices must be a non-empty list")
        for c in choices:
            if not isinstance(c, (str, int, float, bool)):
                raise UsageError(
                    f"{where}: choice {c!r} must be a string, number or boolean "
                    "(write tuples as 'a,b')"
                )
            coerce(name, c, where)
        if len(set(map(repr, choices))) != len(choices):
            raise UsageError(f"{where}: duplicate choices in {choices}")
        return Param(name, kind, choices=tuple(choices), when=when)
    field_type = types[name]
    inner = [a for a in typing.get_args(field_type) if a is not type(None)] or [field_type]
    if inner[0] not in (int, float):
        raise UsageError(
            f"{where}: field {name} is {_type_name(field_type)}; use choices = [...] instead"
        )
    if kind == "float" and inner[0] is int:
        raise UsageError(f"{where}: field {name} is an int; use type = 'int'")
    low, high, step, log = spec.get("low"), spec.get("high"), spec.get("step"), spec.get("log")
    num = (int,) if kind == "int" else (int, float)
    for key, value in (("low", low), ("high", high)):
        if not isinstance(value, num) or isinstance(value, bool):
            raise UsageError(
                f"{where}: {key} = {value!r} must be a{'n int' if kind == 'int' else ' number'}"
            )
    if step is not None and (not isinstance(step, num) or isinstance(step, bool) or step <= 0):
        raise UsageError(f"{where}: step = {step!r} must be a positive number")
    if log is not None and not isinstance(log, bool):
        raise UsageError(f"{where}: log = {log!r} must be true or false")
    log = bool(log)
    if low > high:
        raise UsageError(f"{where}: low = {low} > high = {high}")
    if log and low <= 0:
        raise UsageError(f"{where}: log = true needs low > 0 (got low = {low})")
    if log and kind == "int" and low < 1:
        raise UsageError(f"{where}: an int log range needs low >= 1 (got low = {low})")
    if log and step not in (None, 1 if kind == "int" else None):
        raise UsageError(f"{where}: step and log = true cannot be combined")
    if kind == "int" and step is not None and (high - low) % step:
        raise UsageError(f"{where}: high - low = {high - low} is not a multiple of step = {step}")
    return Param(name, kind, low=low, high=high, step=step, log=log, when=when)


def _parse_when(raw: Any, earlier: list[Param], where: str) -> tuple[tuple[str, tuple], ...]:
    if not isinstance(raw, dict):
        raise UsageError(f"{where}: when must be a table such as when = {{arch = ['vgg11']}}")
    by_name = {p.name: p for p in earlier}
    out = []
    for name, accepted in raw.items():
        if name not in by_name:
            raise UsageError(
                f"{where}: when names {name!r}, which is not an earlier parameter; "
                f"earlier: {', '.join(by_name) or '(none)'}"
            )
        accepted = tuple(accepted) if isinstance(accepted, list) else (accepted,)
        if not accepted:
            raise UsageError(f"{where}: when {name} = [] can never hold")
        parent = by_name[name]
        if parent.kind == "categorical":
            for want in accepted:
                if not any(_matches(c, want) for c in parent.choices):
                    raise UsageError(
                        f"{where}: when {name} = {want!r} matches none of its choices "
                        f"{list(parent.choices)}"
                    )
        out.append((name, accepted))
    return tuple(out)


def _check_configs(space: Space) -> None:
    """Each categorical choice and each range end must make a valid RunConfig, and named
    datasets and architectures must exist: caught here, before a study is created."""
    try:
        base = _check_names(RunConfig().replace(**space.fixed).validate())
    except UsageError as err:
        raise UsageError(f"--space {space.source} [fixed]: {err}") from None
    for p in space.params:
        ends = p.choices if p.kind == "categorical" else (p.low, p.high)
        for value in ends:
            try:
                _check_names(base.replace(**{p.name: coerce(p.name, value)}).validate(), p.name)
            except UsageError as err:
                raise UsageError(f"--space {space.source} [params.{p.name}]: {err}") from None


def _check_names(config: RunConfig, only: str | None = None) -> RunConfig:
    if only in (None, "dataset"):
        from clusterprobe.runners.data import registry

        registry.resolve(config.dataset)
    if only in (None, "arch"):
        from clusterprobe.runners.models import arch_family

        arch_family(config.arch)
    return config


def build_config(space: Space, values: dict[str, Any], *, quick: bool = False) -> RunConfig:
    """RunConfig defaults < --quick preset < [fixed] < suggested values."""
    changes: dict[str, Any] = dict(PRESETS["quick"]) if quick else {}
    changes.update(space.fixed)
    changes.update({k: coerce(k, v) for k, v in values.items()})
    return RunConfig().replace(**changes).validate()
