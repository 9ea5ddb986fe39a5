"""The ``cluster`` stage (SQ over the run's embedding store on a Dask cluster, then every
row's assignment) and the ``plots`` stage (latent space and convergence PNGs)."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from data_contracts.settings import PipelineSettings

from ..atomic_files import atomic_save_npy
from ..cluster_labels import majority_and_purity
from ..fault_points import kill_point
from ..layout import OutputLayout
from ..progress import ProgressArg
from .encoder import open_run_store

log = logging.getLogger(__name__)


def fit_convergence(objective_estimates: list[float], max_iter: int, tol: float) -> bool | None:
    """Whether a fit met the estimator's stopping rule (relative improvement of the pass's
    objective estimate over the previous pass below ``tol``) rather than stopping at its pass
    budget ``max_iter``. ``objective_estimates``: one per pass run, in order. None when the rule
    cannot apply (``tol`` = 0 disables it; a budget of one pass has no previous pass)."""
    if tol <= 0 or max_iter <= 1:
        return None
    if len(objective_estimates) < max_iter:  # it stopped early: only the rule stops early
        return True
    if len(objective_estimates) < 2:
        return False
    prev, last = objective_estimates[-2], objective_estimates[-1]
    return bool((prev - last) < tol * abs(prev))


@contextmanager
def dask_client(settings: PipelineSettings) -> Iterator[tuple[Any, float]]:
    """A ``distributed.Client``: to ``dask_address`` when set, else a LocalCluster that lives
    for the ``with`` block. Yields (client, seconds it took to start)."""
    import dask
    from distributed import Client, LocalCluster

    for name in (
        "distributed",
        "distributed.scheduler",
        "distributed.worker",
        "distributed.core",
        "distributed.nanny",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    t = time.perf_counter()
    if settings.dask_address:
        client = Client(settings.dask_address, timeout="30s")
        cluster = None
    else:
        cluster = LocalCluster(
            n_workers=settings.dask_workers,
            threads_per_worker=1,
            processes=settings.dask_processes,
            dashboard_address="127.0.0.1:0",  # loopback only: the dashboard has no auth
            silence_logs=logging.WARNING,
        )
        client = Client(cluster)
    # the dashboard listens on 127.0.0.1 only; an in-process cluster's link would otherwise
    # name the machine's public address, where nothing answers
    link = {"distributed.dashboard.link": "http://127.0.0.1:{port}/status"} if cluster else {}
    try:
        with dask.config.set(link):
            yield client, time.perf_counter() - t
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _warm_start(
    settings: PipelineSettings, lay: OutputLayout, run_id: str, version: str, dim: int
) -> tuple[np.ndarray | None, str | None]:
    """Centers to start from: this run's last checkpoint (a retried task), else the previous
    completed run's centers when the encoder version and K are unchanged. With
    ``n_clusters="auto"`` there is none: K is chosen afresh every run (a retried task chooses
    the same K again: the choice is seeded)."""
    k = settings.n_clusters
    if k == "auto":
        return None, None
    ckpts = sorted((lay.run_dir(run_id) / "checkpoints").glob("pass-*.npy"))
    if ckpts:
        c = np.load(ckpts[-1])
        if c.shape == (k, dim):
            return c, f"checkpoint {ckpts[-1].name} of this run"
    if not settings.warm_start:
        return None, None
    for rec in reversed(lay.run_records()):
        if (
            rec.completed
            and rec.encoder_version == version
            and rec.n_clusters == k
            and rec.run_id != run_id
        ):
            p = lay.run_dir(rec.run_id) / "centers.npy"
            if p.exists():
                c = np.load(p)
                if c.shape == (k, dim):
                    return c, f"run {rec.run_id}"
    return None, None


def cluster_stage(
    settings: PipelineSettings,
    run_id: str,
    fit_progress: ProgressArg = False,
    assign_progress: ProgressArg = True,
) -> dict[str, Any]:
    """SQ over the run's embedding store on a Dask cluster, checkpointing the centers after
    each pass, then the assignment (cluster id, distance) of every row into the store.
    ``fit_progress`` (passes of ``max_iter``) and ``assign_progress`` (chunks): see
    :mod:`sqflow.progress` (the SQ passes log a line each in any case)."""
    from sqflow import StochasticQuantization
    from sqflow.assign import assign_store
    from sqflow.estimator import PassBudgetWarning
    from sqflow.store import StoreContractError

    t0 = time.perf_counter()
    lay = OutputLayout.of(settings)
    rd = lay.run_dir(run_id)
    store = open_run_store(lay, run_id)
    init, warm_from = _warm_start(settings, lay, run_id, store.encoder_version, store.dim)
    # forgetting applies to a warm start from an earlier run: the centers keep following drift
    forgetting = settings.forgetting_half_life if (warm_from or "").startswith("run ") else None
    ck_dir = rd / "checkpoints"
    passes: list[dict[str, Any]] = []

    def checkpoint(info: dict[str, Any]) -> None:
        atomic_save_npy(ck_dir / f"pass-{info['pass']:03d}.npy", info["centers"])
        kill_point("cluster-pass")  # fault injection (tests, bench)
        passes.append(
            {
                "pass": int(info["pass"]),
                "objective_estimate": float(info["objective_estimate"]),
                "n_steps": int(info["n_steps"]),
            }
        )
        log.info(
            "SQ pass %d: objective estimate %.6g (centers checkpointed)",
            info["pass"],
            info["objective_estimate"],
        )
        if callable(fit_progress):
            fit_progress(int(info["pass"]), settings.max_iter)

    with dask_client(settings) as (client, dask_start_s):
        log.info(
            "Dask client %s (%d workers; started in %.2f s)%s",
            client.dashboard_link or client.scheduler.address,
            len(client.scheduler_info()["workers"]),
            dask_start_s,
            f"; warm start from {warm_from}" if warm_from else "",
        )
        X = store.to_dask()
        est = StochasticQuantization(
            settings.n_clusters,
            k_range=tuple(settings.k_range),
            forgetting=forgetting,
            optimizer=settings.optimizer,
            rank=settings.rank,
            batch_size=settings.sq_batch_size,
            max_iter=settings.max_iter,
            init=init if init is not None else "k-means++",
            random_state=settings.seed,
            chunk_size=settings.store_chunk_rows,
            verbose=1,
        )
        # A nightly warm-started from the previous run's centers starts near a fixed point and
        # runs its pass budget as a fixed amount of tracking work: stopping there is expected,
        # so it is recorded (``converged``, ``n_iter``, ``max_iter``) and logged at INFO, not
        # warned about every night. A cold start (k-means++, K="auto", a retried task's
        # checkpoint) that ends at the budget still warns; the estimator's other
        # ConvergenceWarnings (steps too large, worse than the seeding) always do.
        warm_nightly = (warm_from or "").startswith("run ")
        t_fit = time.perf_counter()
        with warnings.catch_warnings():
            if warm_nightly:
                warnings.simplefilter("ignore", PassBudgetWarning)
            est.fit(X, callback=checkpoint)
        fit_s = time.perf_counter() - t_fit
        converged = fit_convergence(
            [p["objective_estimate"] for p in passes], settings.max_iter, float(est.tol)
        )
        if warm_nightly and converged is False:
            log.info(
                "SQ (warm start from %s) used its pass budget, max_iter=%d, with the objective "
                "estimate still improving by more than tol=%g per pass: expected for a "
                "warm-started nightly (recorded as converged=false)",
                warm_from.removeprefix("run "),
                settings.max_iter,
                est.tol,
            )
        centers = np.asarray(est.cluster_centers_)
        k = int(est.n_clusters_)  # the chosen K for n_clusters="auto"
        if est.k_selection_ is not None:
            log.info(
                "n_clusters='auto': chose K=%d over %s by %s",
                k,
                list(settings.k_range),
                est.k_selection_["criterion"],
            )
        t_assign = time.perf_counter()
        try:  # an interrupted assignment of this very model resumes
            out = assign_store(est, store, client=client, name=run_id, progress=assign_progress)
        except StoreContractError as exc:
            # a retried stage refitted the centers: the earlier attempt's rows are another model's
            log.info(
                "assignments %s belong to an earlier attempt (%s): rewriting them", run_id, exc
            )
            out = assign_store(
                est,
                store,
                client=client,
                name=run_id,
                progress=assign_progress,
                if_exists="overwrite",
            )
        assign_s = time.perf_counter() - t_assign
    atomic_save_npy(rd / "centers.npy", centers)
    cid = out.read_cluster_ids().astype(np.int64)
    dist = out.read_distances().astype(np.float64)
    labels = store.read_labels()
    sizes = np.bincount(cid, minlength=k)
    rows = []
    for j in range(k):
        m = cid == j
        maj, purity = majority_and_purity(labels[m])
        rows.append(
            {
                "cluster_id": j,
                "size": int(sizes[j]),
                "mean_distance": float(dist[m].mean()) if m.any() else None,
                "majority_label": maj,
                "label_purity": purity,
                "center": [float(v) for v in centers[j]],
            }
        )
    r = settings.rank
    objective = float(np.mean(dist**r))
    log.info("SQ: objective %.6g after %d passes; sizes %s", objective, est.n_iter_, sizes.tolist())
    return {
        "objective": objective,
        "n_clusters": k,
        "k_selection": est.k_selection_,
        "forgetting_half_life": forgetting,
        "n_iter": int(est.n_iter_),
        "max_iter": settings.max_iter,
        "tol": float(est.tol),
        # met the stopping rule (True), stopped at the pass budget (False), no rule (None)
        "converged": converged,
        "n_steps": int(est.n_steps_),
        "loss_curve": [float(v) for v in est.loss_curve_],
        "passes": passes,
        "clusters": rows,
        "warm_start_from": warm_from,
        "centers_path": str(rd / "centers.npy"),
        "assignments": out.location,
        "dask_start_seconds": dask_start_s,
        "fit_seconds": fit_s,
        "assign_seconds": assign_s,
        "seconds": time.perf_counter() - t0,
    }


def plots_stage(settings: PipelineSettings, run_id: str, loss_curve: list[float]) -> dict[str, str]:
    """Latent space (sample of the run's embeddings with the centers) and SQ convergence PNGs."""
    from sqflow.plots import plot_convergence, plot_latent
    from sqflow.store import open_store

    t0 = time.perf_counter()
    rd = OutputLayout.of(settings).run_dir(run_id)
    store = open_store(rd / "embeddings.zarr")
    n = store.rows_committed
    take = min(n, 8000)
    z = store.read_embeddings(0, take)
    lab = store.read_labels(0, take)
    centers = np.load(rd / "centers.npy")
    latent = plot_latent(
        z,
        lab,
        rd / "plots" / "latent.png",
        centers=centers,
        title=f"latent space, run {run_id} (first {take} of {n} rows)",
    )
    conv = plot_convergence(
        {f"SQ-{settings.optimizer} r={settings.rank:g}": loss_curve},
        rd / "plots" / "convergence.png",
        xlabel="block",
        ylabel="mean min_k ||z - y_k||^r",
    )
    return {"latent": str(latent), "convergence": str(conv), "seconds": time.perf_counter() - t0}
