"""The ``sample`` stage: scan the source, quarantine bad items, select the run's manifest."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from data_contracts.manifest import QUARANTINE_COLUMNS, ManifestMeta, check_frame, check_manifest
from data_contracts.settings import PipelineSettings

from ..atomic_files import atomic_write_parquet, atomic_write_text
from ..layout import OutputLayout
from ..sources import manifest_hash, open_source, select

log = logging.getLogger(__name__)


def sample_stage(settings: PipelineSettings, run_id: str) -> dict[str, Any]:
    """Scan the source, quarantine bad items, apply the sample mode, write the manifest."""
    t0 = time.perf_counter()
    lay = OutputLayout.of(settings)
    spec = settings.source
    mode = settings.sample
    source = open_source(spec)
    scan = source.scan()
    log.info(
        "source %s: %d items found, %d accepted, %d quarantined",
        spec.dataset,
        scan.n_scanned,
        len(scan.items),
        len(scan.rejected),
    )
    seen = lay.seen_sample_ids(spec.dataset) if mode.mode == "incremental" else None
    manifest = select(scan.items, mode, seen)
    if len(manifest) == 0:
        raise RuntimeError(
            f"sample mode {mode.mode!r} selected no item from {spec.dataset} "
            f"({len(scan.items)} accepted"
            + (f", {len(seen)} already seen by earlier runs" if seen is not None else "")
            + ")"
        )
    check_manifest(manifest)
    rd = lay.run_dir(run_id)
    detected = pd.Timestamp.now(tz="UTC").as_unit("us")
    quarantine = pd.DataFrame(
        {
            "run_id": pd.Series([run_id] * len(scan.rejected), dtype="str"),
            "sample_ref": pd.Series([r for r, _ in scan.rejected], dtype="str"),
            "reason": pd.Series([why for _, why in scan.rejected], dtype="str"),
            "detected_at": pd.Series([detected] * len(scan.rejected), dtype="datetime64[us, UTC]"),
        }
    )
    check_frame(quarantine, QUARANTINE_COLUMNS, "quarantine")
    for ref, why in scan.rejected[:20]:
        log.warning("quarantined %s: %s", ref, why)
    if len(scan.rejected) > 20:
        log.warning(
            "... and %d more quarantined items (quarantine.parquet)", len(scan.rejected) - 20
        )
    mhash = manifest_hash(manifest)
    meta = ManifestMeta(
        run_id=run_id,
        dataset=spec.dataset,
        source=spec,
        sample=mode,
        item_shape=list(scan.item_shape),
        n_scanned=scan.n_scanned,
        n_accepted=len(scan.items),
        n_quarantined=len(scan.rejected),
        n_selected=len(manifest),
        n_labeled=int((manifest["label"] >= 0).sum()),
        manifest_hash=mhash,
        created_at=datetime.now(UTC),
        warnings=scan.warnings,
    )
    atomic_write_parquet(manifest, rd / "manifest.parquet")
    atomic_write_parquet(quarantine, rd / "quarantine.parquet")
    atomic_write_text(rd / "manifest.json", meta.model_dump_json(indent=2))
    top = pd.Series([w.split(":")[0] for _, w in scan.rejected]).value_counts().head(5)
    return {
        **meta.model_dump(mode="json"),
        "manifest_path": str(rd / "manifest.parquet"),
        "quarantine_path": str(rd / "quarantine.parquet"),
        "top_quarantine_reasons": {str(k): int(v) for k, v in top.items()},
        "seconds": time.perf_counter() - t0,
    }
