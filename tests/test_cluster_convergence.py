"""The cluster stage records whether SQ met its stopping rule; a warm-started nightly that uses
up its pass budget is recorded, not warned about, while a cold start still warns."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest

from sqflow.estimator import PassBudgetWarning
from tests.test_engine_options import _blob_store

BUDGET = "did not converge in max_iter="


def test_fit_convergence_follows_the_estimators_rule():
    from sqflow.pipeline.cluster import fit_convergence

    assert fit_convergence([10.0, 5.0, 4.0], max_iter=5, tol=1e-4) is True  # stopped early
    assert fit_convergence([10.0, 5.0, 4.0], max_iter=3, tol=1e-4) is False  # at the budget
    assert fit_convergence([10.0, 5.0, 4.9999], max_iter=3, tol=1e-4) is True  # met on the last
    assert fit_convergence([10.0, 5.0], max_iter=2, tol=0.0) is None  # rule disabled
    assert fit_convergence([10.0], max_iter=1, tol=1e-4) is None  # no previous pass


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_warm_started_nightly_at_its_pass_budget_is_recorded_not_warned(tmp_path):
    from data_contracts.run_record import RunRecord
    from data_contracts.settings import PipelineSettings
    from sqflow.atomic_files import atomic_write_text
    from sqflow.layout import OutputLayout
    from sqflow.pipeline.cluster import cluster_stage

    rng = np.random.default_rng(0)
    true = rng.uniform(-20, 20, size=(4, 3))
    labels = rng.integers(0, 4, 3000)
    X = true[labels] + rng.normal(size=(3000, 3))
    cfg = PipelineSettings(
        output_dir=tmp_path,
        dask_workers=1,
        rank=2.0,
        max_iter=2,
        store_chunk_rows=500,
        n_clusters=4,
    )
    lay = OutputLayout.of(cfg)
    first_id, second_id = "20260101T000000Z-aaaaaaaa", "20260102T000000Z-bbbbbbbb"
    _blob_store(lay, first_id, X, labels)
    # night 1, cold (k-means++): ending at the budget is a real non-convergence and warns
    with pytest.warns(PassBudgetWarning, match=BUDGET + "2"):
        first = cluster_stage(cfg, first_id)
    assert first["warm_start_from"] is None
    assert (first["converged"], first["n_iter"], first["max_iter"]) == (False, 2, 2)
    assert first["tol"] > 0
    rec = RunRecord(
        run_id=first_id,
        started_at="2026-01-01T00:00:00+00:00",
        status="completed",
        encoder_version="v1",
        n_clusters=4,
    )
    rec.add_stage("cluster", first)
    atomic_write_text(lay.run_dir(first_id) / "run.json", rec.to_json())
    # night 2: the data moved (the centers have work to do), warm start from night 1
    _blob_store(lay, second_id, X + 3.0, labels)
    lines = _Lines()
    logger = logging.getLogger("sqflow.pipeline.cluster")
    level = logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            second = cluster_stage(cfg, second_id)
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
    assert second["warm_start_from"] == f"run {first_id}"
    assert (second["converged"], second["n_iter"], second["max_iter"]) == (False, 2, 2)
    budget = [w for w in caught if issubclass(w.category, PassBudgetWarning)]
    assert not budget, [str(w.message) for w in caught]
    assert any("used its pass budget, max_iter=2" in line for line in lines.lines), lines.lines
    # recorded in run.json with the stage
    rec2 = RunRecord(run_id=second_id, started_at="2026-01-02T00:00:00+00:00")
    rec2.add_stage("cluster", second)
    saved = RunRecord.from_json(rec2.to_json())
    assert saved.cluster["converged"] is False and saved.cluster["max_iter"] == 2
    from tasks.artifacts import _convergence_md  # the run summary's wording

    assert _convergence_md(saved.cluster) == " of max_iter 2, stopped at the pass budget"
    # a generous budget on the same warm start: the rule is met, nothing logged as budget
    roomy = cfg.model_copy(update={"max_iter": 30})
    third = cluster_stage(roomy, second_id)
    assert third["converged"] is True and third["n_iter"] < 30
