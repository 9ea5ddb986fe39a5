"""Frames of one synthetic run, shaped like the nightly publish step makes them (for BI tests)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd


def run_frames(
    run_id: str = "20261126T020000Z-abcdef01",
    *,
    started: str = "2026-11-26T02:00:00Z",
    n: int = 200,
    k: int = 4,
    dim: int = 3,
    seed: int = 0,
    drift: float = 0.1,
    n_quarantine: int = 2,
) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    cid = rng.integers(0, k, n).astype(np.int32)
    dist = rng.random(n).astype(np.float32)
    labels = rng.integers(0, 10, n)
    labels[rng.random(n) < 0.3] = -1
    lab = pd.array(np.where(labels >= 0, labels, 0), dtype="Int64")
    lab[labels < 0] = pd.NA
    centers = rng.normal(size=(k, dim))
    rows = []
    for j in range(k):
        m = cid == j
        ll = labels[m & (labels >= 0)]
        maj = int(np.bincount(ll).argmax()) if ll.size else None
        rows.append(
            {
                "run_id": run_id,
                "cluster_id": j,
                "center": [float(v) for v in centers[j]],
                "size": int(m.sum()),
                "mean_distance": float(dist[m].mean()) if m.any() else None,
                "majority_label": maj,
                "label_purity": float(np.mean(ll == maj)) if ll.size else None,
            }
        )
    t0 = pd.Timestamp(started)
    report = pd.DataFrame(
        [
            {
                "run_id": r["run_id"],
                "cluster_id": r["cluster_id"],
                "size": r["size"],
                "majority_label": r["majority_label"],
                "purity": r["label_purity"],
                "mean_distance": r["mean_distance"],
                "knn_accuracy": 0.9,
                "majority_agreement": 0.8,
                "trustworthiness": 0.95,
                "representative_sample_ids": json.dumps(
                    [f"s{i:05d}" for i in np.flatnonzero(cid == r["cluster_id"])[:3]]
                ),
            }
            for r in rows
        ]
    ).astype({"majority_label": "Int64", "purity": "Float64", "mean_distance": "Float64"})
    return {
        "cluster_report": report,
        "runs": pd.DataFrame(
            [
                {
                    "run_id": run_id,
                    "flow_run_id": None,
                    "started_at": t0,
                    "finished_at": t0 + pd.Timedelta(seconds=42),
                    "status": "completed",
                    "dataset": "mnist-all",
                    "encoder_version": "triplet-v0001",
                    "n_samples": n,
                    "n_quarantined": n_quarantine,
                    "n_clusters": k,
                    "objective": float(np.mean(dist.astype(np.float64) ** 3)),
                    "monitor_ran": True,
                    "drift_detected": drift > 0.5,
                    "config": json.dumps({"n_clusters": k, "seed": seed}),
                    "retrain_outcome": "none",
                    "new_encoder_version": None,
                    "degraded_reasons": "[]",
                }
            ]
        ),
        "cluster_centers": pd.DataFrame(rows).astype(
            {"majority_label": "Int64", "label_purity": "Float64", "mean_distance": "Float64"}
        ),
        "assignments": pd.DataFrame(
            {
                "run_id": pd.Series([run_id] * n, dtype="str"),
                "sample_id": pd.Series([f"s{i:05d}" for i in range(n)], dtype="str"),
                "cluster_id": cid,
                "distance": dist,
                "label": lab,
                "encoder_version": pd.Series(["triplet-v0001"] * n, dtype="str"),
            }
        ),
        "drift_reports": pd.DataFrame(
            {
                "run_id": [run_id, run_id],
                "reference_version": ["triplet-v0001"] * 2,
                "statistic": ["mmd", "ks_max"],
                "value": [drift, drift / 2],
                "threshold": [0.5, 0.5],
                "p_value": [None, 0.3],
                "drifted": [drift > 0.5, drift / 2 > 0.5],
                "status": ["ok", "ok"],
                "batch_rows": [n, n],
                "reference_rows": [500, 500],
                "created_at": [t0 + pd.Timedelta(seconds=30)] * 2,
            }
        ),
        "quarantine": pd.DataFrame(
            {
                "run_id": pd.Series([run_id] * n_quarantine, dtype="str"),
                "sample_ref": pd.Series([f"bad/{i}.png" for i in range(n_quarantine)], dtype="str"),
                "reason": pd.Series(["does not decode"] * n_quarantine, dtype="str"),
                "detected_at": pd.Series([t0] * n_quarantine, dtype="datetime64[us, UTC]"),
            }
        ),
    }
