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
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from data_contracts.settings import PipelineSettings


def _config_file() -> Path:
    return Path(os.environ.get("SQFLOW_CONFIG", "sqflow.toml")).expanduser()


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
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


def load_settings(**overrides: Any) -> SqflowSettings:
    """Settings from TOML + environment, with ``overrides`` (e.g. CLI flags) on top."""
    return SqflowSettings(**{k: v for k, v in overrides.items() if v is not None})


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
