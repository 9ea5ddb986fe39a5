"""Loading the pipeline's settings: a TOML file plus ``SQFLOW_*`` environment variables.

The model itself (fields, defaults, validation) is :class:`data_contracts.settings.PipelineSettings`;
this module only says where its values come from.

Precedence (highest first): explicit keyword arguments (CLI flags), ``SQFLOW_*`` environment
variables (nested fields with ``__``, e.g. ``SQFLOW_SOURCE__KIND=npy``), the TOML file named by
``SQFLOW_CONFIG`` (default ``./sqflow.toml`` when it exists), the defaults below.

Example ``sqflow.toml``::

    output_dir = "/data/sqflow"
    n_clusters = 10
    timezone = "Europe/Kyiv"
    [source]
    kind = "image_folder"
    path = "/data/inspection/today"
    labels_path = "/data/inspection/labels.csv"
    [sample]
    mode = "incremental"

Every value is validated when the settings load; a bad one raises :class:`SettingsError`
naming the field, the value and where it came from (the TOML file, an ``SQFLOW_*`` variable or
an argument). A TOML syntax error names the file. The cron expression is checked here with
Prefect's own cron parser (what runs the schedule); every other rule lives in the model.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from data_contracts.settings import PipelineSettings


class SettingsError(ValueError):
    """Settings that do not validate, or a settings file that cannot be read; the message names
    each field, its value and where it came from."""


def _config_file() -> Path:
    return Path(os.environ.get("SQFLOW_CONFIG", "sqflow.toml")).expanduser()


def _read_toml(path: Path) -> dict[str, Any]:
    """The TOML file's table; a syntax or encoding error names the file."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"settings file {str(path)!r} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise SettingsError(
            f"settings file {str(path)!r} is not UTF-8 text (offset {exc.start})"
        ) from None


class SqflowSettings(BaseSettings, PipelineSettings):
    """:class:`data_contracts.settings.PipelineSettings` read from keyword arguments, the
    environment and the TOML file (precedence in the module docstring)."""

    model_config = SettingsConfigDict(
        env_prefix="SQFLOW_", env_nested_delimiter="__", extra="forbid"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = _config_file()
        if "SQFLOW_CONFIG" in os.environ and not path.is_file():
            raise FileNotFoundError(f"SQFLOW_CONFIG={str(path)!r} does not exist")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path.is_file():
            _read_toml(path)  # a syntax error names the file (the TOML source's does not)
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        from prefect.client.schemas.schedules import CronSchedule  # imported when needed

        try:
            CronSchedule(cron=v)
        except ValidationError:
            raise ValueError(
                f"cron {v!r} is not a cron expression; valid: 5 fields 'minute hour day month "
                "weekday', e.g. '0 2 * * *' (02:00 every day)"
            ) from None
        return v


def _origin(loc: tuple[Any, ...], overrides: dict[str, Any], toml: dict[str, Any]) -> str:
    """Where the value at ``loc`` came from: every source that set it (or a part of it, for
    an error about a whole table such as ``source``), highest precedence first."""
    keys = [str(k) for k in loc if isinstance(k, str)]
    if not keys:
        return ""
    out = []
    if keys[0] in overrides:
        out.append("given as an argument / flow config")
    full = "SQFLOW_" + "__".join(keys).upper()
    names = {"SQFLOW_" + "__".join(keys[:n]).upper() for n in range(1, len(keys) + 1)}
    out.extend(
        f"from environment variable {k}"
        for k in sorted(os.environ)
        if k.upper() in names or k.upper().startswith(full + "__")
    )
    if keys[0] in toml:
        out.append(f"from {str(_config_file())!r}")
    return "; ".join(out) or "default"


def _settings_error(exc: ValidationError, overrides: dict[str, Any]) -> SettingsError:
    path = _config_file()
    toml = _read_toml(path) if path.is_file() else {}
    lines = []
    for err in exc.errors():
        loc = err["loc"]
        field = ".".join(str(k) for k in loc) or "settings"
        msg = err["msg"].removeprefix("Value error, ")
        value = err.get("input")
        if isinstance(value, float):
            shown = f" = {value!r}"  # inf / nan as TOML writes them (JSON would say Infinity)
        else:
            shown = "" if isinstance(value, dict) else f" = {json.dumps(value, default=str)}"
        where = _origin(loc, overrides, toml)
        lines.append(f"  {field}{shown} ({where}): {msg}" if where else f"  {field}: {msg}")
    return SettingsError("invalid settings:\n" + "\n".join(lines))


def load_settings(**overrides: Any) -> SqflowSettings:
    """Settings from TOML + environment, with ``overrides`` (e.g. CLI flags) on top.

    Raises :class:`SettingsError` naming each bad field and where its value came from."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return SqflowSettings(**given)
    except ValidationError as exc:
        raise _settings_error(exc, given) from None


def flow_settings(config: dict[str, Any] | None = None) -> PipelineSettings:
    """The typed settings of one flow run: the flow's JSON-able ``config`` overrides on top of
    TOML + environment, validated once at the top of the flow, ``output_dir`` made absolute.
    What every task and stage receives (a plain model: passing it on never re-reads the
    environment)."""
    s = load_settings(**(config or {}))
    return PipelineSettings.model_validate(s.model_dump()).resolved()


def settings_sources(environ: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The effective settings, one row per field (nested fields as ``source.kind``): ``name``,
    ``value`` (JSON-able), ``source`` (``environment``, ``TOML <path>`` or ``default``) and
    ``env`` (the ``SQFLOW_*`` variable that sets it). What ``sqflow config`` prints."""
    import tomllib

    from pydantic import BaseModel

    env = {k.upper(): v for k, v in (os.environ if environ is None else environ).items()}
    path = _config_file()
    toml: dict[str, Any] = tomllib.loads(path.read_text()) if path.is_file() else {}
    values = load_settings().model_dump(mode="json")
    rows: list[dict[str, Any]] = []
    for name, field in PipelineSettings.model_fields.items():
        sub = field.annotation if isinstance(field.annotation, type) else None
        if sub is not None and issubclass(sub, BaseModel):
            whole = f"SQFLOW_{name.upper()}"
            for child in sub.model_fields:
                var = f"{whole}__{child.upper()}"
                if var in env or whole in env:
                    src = "environment"
                elif isinstance(toml.get(name), dict) and child in toml[name]:
                    src = f"TOML {path}"
                else:
                    src = "default"
                rows.append(
                    {
                        "name": f"{name}.{child}",
                        "value": (values.get(name) or {}).get(child),
                        "source": src,
                        "env": var,
                    }
                )
            continue
        var = f"SQFLOW_{name.upper()}"
        src = "environment" if var in env else (f"TOML {path}" if name in toml else "default")
        rows.append({"name": name, "value": values.get(name), "source": src, "env": var})
    return rows
