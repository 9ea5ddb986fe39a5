"""The pipeline's settings as a typed contract: what every stage receives.

:class:`PipelineSettings` holds every setting a run needs that is not data (paths, the source and
sample mode, encoder, clustering, Dask, schedule). Stage functions in ``sqflow.pipeline`` take it
typed (no config dicts, no repeated defaults: the defaults live here, once). Loading it from a
TOML file and ``SQFLOW_*`` environment variables is the flows' business
(:mod:`flows.settings`, ``SqflowSettings``), because this layer reads no environment.

Validation happens when the settings are built, naming the field: numbers are finite and in
range, a boolean is never taken for a number (``n_clusters = true``), ``device`` and
``timezone`` are checked here. The ``cron`` expression is checked by Prefect's own cron parser
when the flows load the settings (:mod:`flows.settings`), because this layer may not import
Prefect and Prefect is what runs the schedule.

This module imports nothing of sqflow (layer rule).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .manifest import Float, Int, SampleSpec, SourceSpec

#: settings that schedule the flow rather than shape a run (not flow parameters)
SCHEDULE_FIELDS = frozenset({"cron", "timezone"})

#: torch devices a run may ask for
DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d+)?|mps")


class PipelineSettings(BaseModel):
    """Everything a run needs that is not data; nothing hard-coded to one machine."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    # where things live
    output_dir: Path = Field(Path("sqflow-output"), description="Root of all outputs.")
    models_dir: Path | None = Field(None, description="Model registry; default <output>/models.")
    # what to read
    source: SourceSpec = Field(default_factory=lambda: SourceSpec(kind="mnist", split="all"))
    sample: SampleSpec = Field(default_factory=SampleSpec)
    # encoder (trained when no model is registered, on labeled and unlabeled rows of the source)
    train_if_missing: bool = True
    latent_dim: Int = Field(3, ge=1)
    encoder_epochs: Int = Field(3, ge=1)
    encoder_train_rows: Int = Field(
        6000, ge=100, description="Rows (labeled and unlabeled) the encoder trains on."
    )
    encoder_batch_size: Int = Field(500, ge=2)
    encoder_augment: bool = Field(
        False,
        description="Images: random rotation (+-10 deg) and shift (+-8 %) of training "
        "batches; reached >= 99 % F1 from 25 % labels on MNIST (README). Ignored for vectors.",
    )
    encoder_self_training: bool | Literal["auto"] = Field(
        "auto",
        description="Self-training on rows without labels: pseudo-labels (see "
        "encoder_pseudo_source) join the triplet loss from half-way through the epochs, and "
        "NT-Xent acts on a projection head over the hidden layer. 'auto': on when no training "
        "row has a label and n_clusters is an integer (label-free MNIST at the nightly's "
        "defaults: 69.6 % clustering accuracy with it, 33.4 % without, README), off otherwise. "
        "true without any label needs an integer n_clusters.",
    )
    encoder_pseudo_source: Literal["manifold", "embedding"] = Field(
        "manifold",
        description="Where self-training's pseudo-labels come from. 'manifold': once, UMAP + a "
        "Gaussian mixture on the network's features (label-free MNIST: 91-94 % clustering "
        "accuracy on 10,000 rows, README). 'embedding': every epoch, confident SQ assignments "
        "of the encoder's own embedding (gained 2-3 points of F1 with 600-3,000 MNIST labels; "
        "label-free 35-72 %, unstable).",
    )
    reference_rows: Int = Field(
        10000,
        ge=10,
        description="Rows of the reference embedding set (at most half of the source's rows; "
        "never trained on).",
    )
    retrain_min_gain: Float = Field(
        0.0,
        ge=-1.0,
        le=1.0,
        description="A retrained encoder is made current only when its held-out score (kNN "
        "accuracy of held-out labeled rows, or 1 - normalised SQ objective without labels) is "
        ">= the current one's + this margin; negative tolerates a small loss.",
    )
    device: str | None = Field(
        None, description="torch device: cpu, cuda, cuda:N or mps; None = CUDA when present."
    )
    embed_batch_size: Int = Field(4096, ge=1)
    store_chunk_rows: Int = Field(8192, ge=1, description="Rows per Zarr chunk / Dask block.")
    # clustering
    # n_clusters is validated here and only here (its type and validators say what is valid)
    n_clusters: Int | Literal["auto"] = Field(
        10,
        description="K (>= 1), or 'auto': chosen per run over k_range by the held-out "
        "Calinski-Harabasz ratio (sqflow.model_selection); the choice and its curve are "
        "recorded in the cluster stage result (n_clusters, k_selection).",
    )
    k_range: tuple[Int, Int] = Field((2, 30), description="K tried by n_clusters='auto'.")
    forgetting_half_life: Int | None = Field(
        None,
        ge=1,
        description="Half-life in samples of the warm-started SQ fit (StochasticQuantization "
        "forgetting): the step never decays below the rate at which a sample's weight halves "
        "every this many samples of its center, so warm-started centers keep following drift. "
        "None: no floor.",
    )
    optimizer: Literal["sgd", "momentum", "nag", "adagrad", "rmsprop", "adam"] = "sgd"
    rank: Float = Field(3.0, ge=1.0)
    sq_batch_size: Int = Field(1, ge=1)
    max_iter: Int = Field(10, ge=1)
    seed: Int = Field(
        0, ge=0, le=2**32 - 1, description="Seed of clustering and training (numpy's range)."
    )
    warm_start: bool = True
    # Dask
    dask_address: str | None = Field(None, description="Scheduler address; None: LocalCluster.")
    dask_workers: Int = Field(2, ge=1)
    dask_processes: bool = Field(False, description="LocalCluster with worker processes.")
    # schedule and concurrency
    cron: str = "0 2 * * *"
    timezone: str = "UTC"
    lock_timeout_s: Float = Field(0.0, ge=0, description="Wait for another run's lock.")

    postgres_secret_block: str | None = Field(
        None,
        description="Name of a Prefect Secret block holding the PostgreSQL URL (used when "
        "SQFLOW_POSTGRES_URL is not set); None: no PostgreSQL unless the variable is set.",
    )

    @field_validator("device")
    @classmethod
    def _device(cls, v: str | None) -> str | None:
        if v is not None and not DEVICE_PATTERN.fullmatch(v):
            raise ValueError(
                f"device {v!r} is not valid; valid: cpu, cuda, cuda:N (N = 0, 1, ...), mps"
            )
        return v

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"timezone {v!r} is not an IANA time zone; valid: e.g. UTC, Europe/Kyiv, "
                "America/New_York"
            ) from None
        return v

    @field_validator("n_clusters", mode="before")
    @classmethod
    def _n_clusters_not_bool(cls, v: Any) -> Any:
        # int(True) == 1: a TOML/JSON boolean must not silently become one cluster
        if isinstance(v, bool):
            raise ValueError(f"n_clusters={v!r}: use an integer >= 1 or 'auto', not a boolean")
        return v

    @field_validator("n_clusters")
    @classmethod
    def _n_clusters_positive(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError(f"n_clusters={v}: use an integer >= 1 or 'auto'")
        return v

    @field_validator("k_range")
    @classmethod
    def _k_range_ordered(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 2 <= v[0] <= v[1]:
            raise ValueError(f"k_range={v}: use (k_min, k_max) with 2 <= k_min <= k_max")
        return v

    def flow_parameters(self) -> dict[str, Any]:
        """The JSON-able ``config`` of a flow run (the schedule fields left out)."""
        return self.model_dump(mode="json", exclude=set(SCHEDULE_FIELDS))

    def resolved(self) -> PipelineSettings:
        """A copy with ``output_dir`` made absolute, so every stage (and a retrain deployment
        running in another process) sees the same folder."""
        return self.model_copy(update={"output_dir": Path(self.output_dir).expanduser().resolve()})
