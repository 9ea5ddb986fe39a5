"""The one settings model of the pipeline: a TOML file plus ``SQFLOW_*`` environment variables.

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
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from data_contracts.manifest import SampleSpec, SourceSpec


def _config_file() -> Path:
    return Path(os.environ.get("SQFLOW_CONFIG", "sqflow.toml")).expanduser()


class SqflowSettings(BaseSettings):
    """Everything a run needs that is not data; nothing hard-coded to one machine."""

    model_config = SettingsConfigDict(
        env_prefix="SQFLOW_", env_nested_delimiter="__", extra="forbid"
    )

    # where things live
    output_dir: Path = Field(Path("sqflow-output"), description="Root of all outputs.")
    models_dir: Path | None = Field(None, description="Model registry; default <output>/models.")
    # what to read
    source: SourceSpec = Field(default_factory=lambda: SourceSpec(kind="mnist", split="all"))
    sample: SampleSpec = Field(default_factory=SampleSpec)
    # encoder (trained when no model is registered, on the labeled part of the source)
    train_if_missing: bool = True
    latent_dim: int = Field(3, ge=1)
    encoder_epochs: int = Field(3, ge=1)
    encoder_train_rows: int = Field(6000, ge=100, description="Labeled rows used to train.")
    encoder_batch_size: int = Field(500, ge=2)
    encoder_augment: bool = Field(
        False,
        description="Images: random rotation (+-10 deg) and shift (+-8 %) of training "
        "batches; reached >= 99 % F1 from 25 % labels on MNIST (README). Ignored for vectors.",
    )
    reference_rows: int = Field(10000, ge=10, description="Rows of the reference embedding set.")
    device: str | None = Field(None, description="torch device; None = CUDA when present.")
    embed_batch_size: int = Field(4096, ge=1)
    store_chunk_rows: int = Field(8192, ge=1, description="Rows per Zarr chunk / Dask block.")
    # clustering
    n_clusters: int = Field(10, ge=1)
    optimizer: Literal["sgd", "momentum", "nag", "adagrad", "rmsprop", "adam"] = "sgd"
    rank: float = Field(3.0, ge=1.0)
    sq_batch_size: int = Field(1, ge=1)
    max_iter: int = Field(10, ge=1)
    seed: int = 0
    warm_start: bool = True
    # Dask
    dask_address: str | None = Field(None, description="Scheduler address; None: LocalCluster.")
    dask_workers: int = Field(2, ge=1)
    dask_processes: bool = Field(False, description="LocalCluster with worker processes.")
    # schedule and concurrency
    cron: str = "0 2 * * *"
    timezone: str = "UTC"
    lock_timeout_s: float = Field(0.0, ge=0, description="Wait for another run's lock.")

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

    def flow_parameters(self) -> dict[str, Any]:
        """Parameters of the ``nightly`` flow (JSON-able) from these settings."""
        data = self.model_dump(mode="json", exclude={"cron", "timezone"})
        return data


def load_settings(**overrides: Any) -> SqflowSettings:
    """Settings from TOML + environment, with ``overrides`` (e.g. CLI flags) on top."""
    return SqflowSettings(**{k: v for k, v in overrides.items() if v is not None})
