"""Drift statistics on real MNIST embeddings (sqflow.drift) and the drift policy contract."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from data_contracts import drift_policy as contract
from data_contracts.drift_policy import DriftPolicy
from sqflow.drift import detect_drift, ks_test, mmd_test


@pytest.fixture(scope="module")
def mnist_embeddings():
    """A small triplet encoder (2,000 labeled MNIST training images, 2 epochs) and embeddings of
    other training images: a reference (4,000), an in-distribution pool (4,000, with labels) and
    1,000 images rotated by 90 degrees. Returns a dict of float32 arrays (n, 3)."""
    import torch
    from scipy import ndimage

    from sqflow.datasets import load_mnist
    from sqflow.embedding import train_encoder

    torch.set_num_threads(1)
    x, y = load_mnist("train")
    idx = np.random.default_rng(0).permutation(len(x))
    tr, ref, pool, rot = idx[:2000], idx[2000:6000], idx[6000:10000], idx[10000:11000]
    enc = train_encoder(
        x[tr], y[tr], epochs=2, batch_size=250, seed=0, progress=False, val_fraction=0.0
    )
    rotated = ndimage.rotate(
        x[rot].astype(np.float32) / 255.0, 90, axes=(1, 2), reshape=False, order=1
    )
    return {
        "ref": enc.embed(x[ref]),
        "test": enc.embed(x[pool]),
        "test_labels": y[pool],
        "rot90": enc.embed(np.clip(rotated, 0, 1).astype(np.float32)),
    }


def _centers(ref: np.ndarray) -> np.ndarray:
    from sqflow import StochasticQuantization

    return StochasticQuantization(10, random_state=0).fit(ref).cluster_centers_


def test_in_distribution_batches_are_not_flagged(mnist_embeddings):
    e = mnist_embeddings
    c = _centers(e["ref"])
    rng = np.random.default_rng(1)
    for seed in range(3):
        batch = e["test"][rng.choice(len(e["test"]), 1000, replace=False)]
        rep = detect_drift(e["ref"], batch, centers=c, seed=seed)
        assert rep.status == "no_drift", rep.to_markdown()
        assert rep.drifted is False
        assert {s.name for s in rep.statistics} == {"mmd", "ks", "distortion", "occupancy"}
        assert all(not s.drifted for s in rep.statistics)
        assert rep.sizes["batch_rows"] == 1000 and rep.sizes["reference_rows"] == 4000


def test_strongly_rotated_batch_is_flagged_by_every_statistic(mnist_embeddings):
    e = mnist_embeddings
    c = _centers(e["ref"])
    batch = e["rot90"]
    rep = detect_drift(e["ref"], batch, centers=c)
    assert rep.status == "drift" and rep.drifted is True
    assert rep.statistic("mmd").p_value == pytest.approx(1 / (rep.policy["mmd_permutations"] + 1))
    assert rep.statistic("ks").p_value < 1e-6
    assert rep.flagged == ["mmd", "ks", "distortion", "occupancy"], rep.to_markdown()
    assert rep.statistic("distortion").value > 1.1
    assert any("flags drift" in r for r in rep.reasons)
    # each statistic usable alone
    for name in ("mmd", "ks", "distortion", "occupancy"):
        alone = detect_drift(e["ref"], batch, centers=c, policy=DriftPolicy(statistics=[name]))
        assert alone.drifted is True and [s.name for s in alone.statistics] == [name]


def test_class_prior_shift_moves_cluster_occupancy(mnist_embeddings):
    e = mnist_embeddings
    c = _centers(e["ref"])
    only = np.flatnonzero(e["test_labels"] <= 2)
    batch = e["test"][np.random.default_rng(3).choice(only, 1000, replace=False)]
    rep = detect_drift(e["ref"], batch, centers=c, policy=DriftPolicy(statistics=["occupancy"]))
    assert rep.drifted is True
    assert rep.statistic("occupancy").value > 0.25


def test_too_small_batch_gives_insufficient_data(mnist_embeddings):
    e = mnist_embeddings
    rep = detect_drift(e["ref"], e["test"][:50])
    assert rep.status == "insufficient_data" and rep.drifted is None
    assert rep.statistics == []
    assert "50 rows" in rep.reasons[0] and "min_batch_rows" in rep.reasons[0]
    rep = detect_drift(e["ref"][:100], e["test"][:1000])
    assert rep.status == "insufficient_data" and "min_reference_rows" in rep.reasons[0]


def test_mismatched_dims_and_bad_values_fail_clearly(mnist_embeddings):
    e = mnist_embeddings
    with pytest.raises(ValueError, match="batch has 4 columns but reference has 3"):
        detect_drift(e["ref"], np.zeros((500, 4)))
    with pytest.raises(ValueError, match=r"centers must be \(K, 3\)"):
        detect_drift(e["ref"], e["test"][:500], centers=np.zeros((10, 2)))
    bad = e["test"][:500].copy()
    bad[7, 1] = np.nan
    with pytest.raises(
        ValueError, match=r"batch holds 1 NaN/inf value\(s\) \(first at row 7, column 1\)"
    ):
        detect_drift(e["ref"], bad)
    ref = e["ref"].copy()
    ref[3, 0] = np.inf
    with pytest.raises(ValueError, match="reference holds 1 NaN/inf"):
        detect_drift(ref, e["test"][:500])
    with pytest.raises(ValueError, match="2-D"):
        detect_drift(e["ref"], e["test"][:, 0])
    with pytest.raises(ValueError, match="rank"):
        detect_drift(e["ref"], e["test"][:500], rank=0.5)


def test_deterministic_and_same_result_for_dask_and_zarr_inputs(mnist_embeddings, tmp_path):
    import dask.array as da
    import zarr

    e = mnist_embeddings
    c = _centers(e["ref"])
    pol = DriftPolicy(max_reference_rows=4000, mmd_max_rows=500)
    batch = e["test"][:1500]
    a = detect_drift(e["ref"], batch, centers=c, policy=pol, seed=5).to_dict()
    assert detect_drift(e["ref"], batch, centers=c, policy=pol, seed=5).to_dict() == a
    zr = zarr.create_array(
        str(tmp_path / "ref.zarr"), shape=e["ref"].shape, chunks=(700, 3), dtype="float32"
    )
    zr[:] = e["ref"]
    b = detect_drift(zr, da.from_array(batch, chunks=(400, 3)), centers=c, policy=pol, seed=5)
    assert b.to_dict() == a
    assert detect_drift(e["ref"], batch, centers=c, policy=pol, seed=6).to_dict() != a


def test_statistics_are_calibrated_on_synthetic_null_and_sensitive_to_a_shift():
    rng = np.random.default_rng(0)
    pvals = [
        mmd_test(rng.normal(size=(150, 2)), rng.normal(size=(150, 2)), permutations=99, rng=i)[1]
        for i in range(40)
    ]
    assert 0.02 <= np.mean(np.array(pvals) <= 0.1) <= 0.25  # ~10 % under the null
    _, p, _ = mmd_test(
        rng.normal(size=(150, 2)), rng.normal(0.5, 1, size=(150, 2)), permutations=99, rng=0
    )
    assert p == pytest.approx(0.01)
    D, p, Ds, ps = ks_test(rng.normal(size=(500, 3)), rng.normal(size=(500, 3)) + [0, 0, 0.5])
    assert int(np.argmax(Ds)) == 2 and p < 1e-6 and ps[0] > 0.01


def test_policy_contract_validates_and_schema_is_current():
    assert contract.export_schemas(check=True) == [], (
        "run `python -m data_contracts.drift_policy` and commit the schema"
    )
    p = DriftPolicy()
    assert p.alpha == 0.01 and p.min_agreeing == 1 and len(p.statistics) == 4
    with pytest.raises(ValidationError, match="min_agreeing=3 exceeds"):
        DriftPolicy(statistics=["mmd", "ks"], min_agreeing=3)
    with pytest.raises(ValidationError, match="not in statistics"):
        DriftPolicy(statistics=["mmd"], required=["ks"])
    with pytest.raises(ValidationError, match="cannot give a p-value"):
        DriftPolicy(alpha=0.001, mmd_permutations=200)
    with pytest.raises(ValidationError):
        DriftPolicy(unknown_field=1)
    with pytest.raises(TypeError, match="policy must be"):
        detect_drift(np.zeros((600, 2)), np.zeros((300, 2)), policy="strict")


def test_center_based_tests_leave_out_the_rows_the_centers_were_fitted_on():
    """The distortion p-value is valid only when the centers were not fitted on the reference
    rows it compares with: given ``centers_fit_rows`` those rows are left out; without centers,
    detect_drift fits on one half of its reference sample and tests on the other."""
    from sqflow import StochasticQuantization

    rng = np.random.default_rng(3)
    ref, bat = rng.normal(size=(1000, 3)), rng.normal(size=(400, 3))
    fit = np.sort(rng.permutation(1000)[:500])
    c = StochasticQuantization(5, rank=3.0, random_state=0).fit(ref[fit]).cluster_centers_
    pol = {"statistics": ["distortion", "occupancy"], "n_clusters": 5}
    rep = detect_drift(ref, bat, centers=c, policy=pol, centers_fit_rows=fit)
    assert rep.sizes["reference_center_tests"] == 500
    assert "fitted on 500 of the sampled reference rows" in rep.centers_source
    own = detect_drift(ref, bat, policy=pol)
    assert own.sizes["reference_center_tests"] == 500 and "other 500 rows" in own.centers_source
    with pytest.raises(ValueError, match="reference rows are left for the center-based tests"):
        detect_drift(ref, bat, centers=c, policy=pol, centers_fit_rows=np.arange(999))
