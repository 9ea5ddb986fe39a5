"""The cluster report on a small real run: MNIST pixels reduced to 3-D with PCA as the
embedding, clustered with sqflow's SQ, two nightly-like runs (the second shows trends and
previous values), a labeled hold-out from the MNIST test split.

The figures are re-computed here independently (NumPy / scikit-learn) and compared with the
returned table; the page is rendered by a real headless Chromium and the numbers read back
from its DOM must equal the table (a test fails if any figure on the page disagrees).
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from sqflow.report import (
    CLUSTER_REPORT_COLUMNS,
    HeldOut,
    RunHealth,
    build_report,
    summarise_previous,
)
from tests._chromium import CHROMIUM, chromium_command

K = 8
TOL = 5e-4 + 1e-9  # half a unit of the last printed digit (0.1% or 0.001)
N_RUN = 2500
N_HELD = 800


# ------------------------------------------------------------------------------ fixtures
def _run(mnist, pca, seed: int, run_id: str, out: Path, previous=()):
    from sqflow import StochasticQuantization

    x, y, xt, yt = mnist
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(x), N_RUN, replace=False))
    flat = x[rows].reshape(N_RUN, -1).astype(np.float64) / 255
    z = pca.transform(flat)
    est = StochasticQuantization(K, rank=3.0, max_iter=5, random_state=seed).fit(z)
    centers = est.cluster_centers_
    cid = est.predict(z)
    dist = np.linalg.norm(z - centers[cid], axis=1)
    labels = y[rows].astype(np.int64)
    labels[rng.random(N_RUN) < 0.3] = -1  # partly labeled
    ids = np.array([f"mnist-train-{i:05d}" for i in rows])
    pos = {s: i for i, s in enumerate(ids)}
    hflat = xt[:N_HELD].reshape(N_HELD, -1).astype(np.float64) / 255
    held = HeldOut(pca.transform(hflat), yt[:N_HELD], inputs=hflat)
    health = RunHealth(
        objective=float(np.mean(dist**3)),
        loss_curve=list(est.loss_curve_),
        n_passes=int(est.n_iter_),
        timings={"sample": 0.5, "cluster": 1.5},
        n_quarantined=2,
        quarantine_reasons={"value out of range [0, 1]": 2},
        dataset="mnist-train (test)",
        encoder_version="pca-3",
    )
    res = build_report(
        run_id,
        out,
        embeddings=z,
        cluster_ids=cid,
        distances=dist,
        centers=centers,
        sample_ids=ids,
        labels=labels,
        thumbnails=lambda q: [x[rows[pos[s]]] for s in q],
        heldout=held,
        previous=previous,
        health=health,
    )
    return {
        "res": res,
        "z": z,
        "cid": cid,
        "dist": dist,
        "labels": labels,
        "ids": ids,
        "held": held,
        "centers": centers,
        "rows": rows,
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from sklearn.decomposition import PCA

    from sqflow.datasets import load_mnist

    x, y = load_mnist("train")
    xt, yt = load_mnist("test")
    fit_rows = np.random.default_rng(42).choice(len(x), 3000, replace=False)
    pca = PCA(3, random_state=0).fit(x[fit_rows].reshape(3000, -1).astype(np.float64) / 255)
    base = tmp_path_factory.mktemp("report")
    a = _run((x, y, xt, yt), pca, 1, "20261125T020000Z-aaaaaaaa", base / "a")
    prev = summarise_previous(a["res"].table, "20261125T020000Z-aaaaaaaa")
    b = _run((x, y, xt, yt), pca, 2, "20261126T020000Z-bbbbbbbb", base / "b", previous=[prev])
    return a, b


# ------------------------------------------------------------------------------ helpers
class _Dom(HTMLParser):
    """Collects data-field cells (text), <img> sources and <body> attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[tuple[str, int | None], str] = {}
        self.imgs: list[str] = []
        self.body: dict[str, str] = {}
        self._open: tuple[str, int | None] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.body = {k: v or "" for k, v in a.items()}
        if tag == "img":
            self.imgs.append(a.get("src") or "")
        if "data-field" in a:
            c = a.get("data-cluster")
            self._open = (a["data-field"], None if c is None else int(c))
            self._text = []

    def handle_data(self, data):
        if self._open is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        if self._open is not None and tag in ("td", "b"):
            self.fields[self._open] = "".join(self._text).strip()
            self._open = None


def _parse(html_text: str) -> _Dom:
    d = _Dom()
    d.feed(html_text)
    return d


def _pct(s: str) -> float | None:
    return None if s == "n/a" else float(s.rstrip("%")) / 100


def check_page_figures(dom: _Dom, table: pd.DataFrame, previous: pd.DataFrame | None) -> None:
    """Every figure the page shows equals the table (to the page's printed precision)."""
    for r in table.itertuples():
        c = int(r.cluster_id)
        assert int(dom.fields[("size", c)].replace(",", "")) == r.size, f"size of cluster {c}"
        if pd.isna(r.purity):
            assert dom.fields[("purity", c)] == "n/a"
        else:
            assert _pct(dom.fields[("purity", c)]) == pytest.approx(r.purity, abs=TOL), (
                f"purity of cluster {c}"
            )
        assert float(dom.fields[("mean_distance", c)]) == pytest.approx(r.mean_distance, abs=TOL)
        lab = dom.fields[("majority_label", c)]
        assert (lab == "-") if pd.isna(r.majority_label) else int(lab) == r.majority_label
        if previous is not None:
            want = previous.set_index("cluster_id")["size"].get(c)
            assert int(dom.fields[("previous_size", c)].replace(",", "")) == want
    row = table.iloc[0]
    assert _pct(dom.fields[("knn_accuracy", None)]) == pytest.approx(row.knn_accuracy, abs=TOL)
    assert _pct(dom.fields[("majority_agreement", None)]) == pytest.approx(
        row.majority_agreement, abs=TOL
    )
    assert float(dom.fields[("trustworthiness", None)]) == pytest.approx(
        row.trustworthiness, abs=TOL
    )
    if previous is not None:
        p = previous.iloc[0]
        assert _pct(dom.fields[("previous_knn_accuracy", None)]) == pytest.approx(
            p.knn_accuracy, abs=TOL
        )
        assert float(dom.fields[("previous_trustworthiness", None)]) == pytest.approx(
            p.trustworthiness, abs=TOL
        )


def _png_ok(src: str) -> Image.Image:
    head = "data:image/png;base64,"
    assert src.startswith(head), f"image is not an embedded PNG: {src[:60]!r}"
    raw = base64.b64decode(src[len(head) :], validate=True)
    im = Image.open(io.BytesIO(raw))
    im.verify()
    assert im.format == "PNG"
    return Image.open(io.BytesIO(raw))


def _chromium(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    cmd = chromium_command(tmp, *args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


# ------------------------------------------------------------------------------ tests
def _knn_reference(z: np.ndarray, y: np.ndarray, k: int) -> float:
    d = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nn = np.argsort(d, axis=1, kind="stable")[:, :k]
    pred = np.array([np.bincount(y[row], minlength=10).argmax() for row in nn])
    return float(np.mean(pred == y))


def test_figures_equal_independent_computation(runs):
    from sklearn.manifold import trustworthiness

    for run in runs:
        t = run["res"].table
        assert list(t.columns) == list(CLUSTER_REPORT_COLUMNS)
        assert len(t) == K and t["size"].sum() == N_RUN
        np.testing.assert_array_equal(t["size"], np.bincount(run["cid"], minlength=K))
        df = pd.DataFrame({"c": run["cid"], "y": run["labels"], "d": run["dist"]})
        np.testing.assert_allclose(t["mean_distance"], df.groupby("c")["d"].mean(), rtol=1e-12)
        lab = df[df.y >= 0]
        maj = lab.groupby("c")["y"].agg(
            lambda s: (
                s.value_counts().sort_index().sort_values(ascending=False, kind="stable").index[0]
            )
        )
        pur = lab.groupby("c")["y"].agg(lambda s: s.value_counts().iloc[0] / len(s))
        np.testing.assert_array_equal(
            t.set_index("cluster_id").loc[maj.index, "majority_label"], maj.to_numpy()
        )
        np.testing.assert_allclose(t.set_index("cluster_id").loc[pur.index, "purity"], pur)
        # representative ids: the members nearest to their center, nearest first
        for r in t.itertuples():
            m = np.flatnonzero(run["cid"] == r.cluster_id)
            want = run["ids"][m[np.argsort(run["dist"][m], kind="stable")][:16]].tolist()
            assert json.loads(r.representative_sample_ids) == want
        h = run["held"]
        zc = run["centers"]
        assert t["knn_accuracy"].iloc[0] == pytest.approx(_knn_reference(h.embeddings, h.labels, 5))
        near = ((h.embeddings[:, None] - zc[None]) ** 2).sum(-1).argmin(1)
        majmap = t.set_index("cluster_id")["majority_label"]
        agree = np.mean([majmap[c] == yy for c, yy in zip(near, h.labels, strict=True)])
        assert t["majority_agreement"].iloc[0] == pytest.approx(agree)
        assert t["trustworthiness"].iloc[0] == pytest.approx(
            trustworthiness(h.inputs, h.embeddings, n_neighbors=5)
        )
        # sanity: real MNIST in 3-D PCA keeps some label structure, far above chance (10%)
        assert t["knn_accuracy"].iloc[0] > 0.3
        assert 0.5 < t["trustworthiness"].iloc[0] <= 1.0
    # files written beside the page
    res = runs[1]["res"]
    assert res.html_path.exists() and res.json_path.exists()
    pd.testing.assert_frame_equal(pd.read_parquet(res.table_path), res.table)


def test_page_is_offline_and_static_figures_match(runs):
    a, b = runs
    text = b["res"].html_path.read_text()
    low = text.lower()
    for bad in ('src="http', "src='http", 'href="http', "url(http", "@import", "<link"):
        assert bad not in low, f"the page references an external resource ({bad})"
    dom = _parse(text)
    assert len(dom.imgs) == K * 24 + 4  # thumbnails + latent, sizes, trends, convergence
    for src in dom.imgs:
        _png_ok(src)
    check_page_figures(dom, b["res"].table, a["res"].table)
    assert "monitor did not run" in text  # no drift info given: said so, never "no drift"


def test_page_check_fails_when_a_figure_disagrees(runs):
    """The checker used on the rendered page is not vacuous: one wrong figure fails it."""
    a, b = runs
    t = b["res"].table
    bad = t.copy()
    bad.loc[3, "size"] = int(bad.loc[3, "size"]) + 1
    dom = _parse(b["res"].html_path.read_text())
    with pytest.raises(AssertionError):
        check_page_figures(dom, bad, a["res"].table)
    bad = t.copy()
    bad["knn_accuracy"] = bad["knn_accuracy"] - 0.01
    with pytest.raises(AssertionError):
        check_page_figures(dom, bad, a["res"].table)


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (`apt-get install -y "
    "chromium chromium-driver`; .ci/run installs it)",
)
def test_page_renders_in_headless_chromium(runs, tmp_path):
    a, b = runs
    url = b["res"].html_path.resolve().as_uri()
    shot = tmp_path / "report.png"
    _chromium([f"--screenshot={shot}", "--window-size=1280,4000", url], tmp_path)
    im = Image.open(shot)
    assert im.size == (1280, 4000)
    px = np.asarray(im.convert("L"), dtype=np.float64)
    assert px.std() > 10, "the screenshot is blank"
    dom_text = _chromium(["--dump-dom", url], tmp_path).stdout
    dom = _parse(dom_text)
    # the browser decoded every embedded image (set by the page's onload script)
    total = int(dom.body["data-images-total"])
    assert total == len(dom.imgs) == K * 24 + 4
    assert int(dom.body["data-images-loaded"]) == total
    for src in dom.imgs:
        _png_ok(src)
    check_page_figures(dom, b["res"].table, a["res"].table)
    assert dom.body["data-run-id"] == "20261126T020000Z-bbbbbbbb"


def test_vector_data_shows_tables_and_drift(tmp_path):
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    z = np.concatenate([c + rng.normal(size=(60, 2)) for c in centers])
    cid = ((z[:, None] - centers[None]) ** 2).sum(-1).argmin(1)
    dist = np.linalg.norm(z - centers[cid], axis=1)
    drift = {
        "drifted": True,
        "status": "ok",
        "reasons": ["MMD p = 0.001 <= 0.01"],
        "statistics": [
            {"statistic": "mmd", "value": 0.2, "threshold": 0.01, "p_value": 0.001, "drifted": True}
        ],
    }
    res = build_report(
        "vec",
        tmp_path,
        embeddings=z,
        cluster_ids=cid,
        distances=dist,
        centers=centers,
        sample_ids=[f"s{i}" for i in range(len(z))],
        health=RunHealth(drift=drift),
    )
    text = res.html_path.read_text()
    dom = _parse(text)
    assert len(dom.imgs) == 2  # latent + sizes: no thumbnails, no trend, no curve
    assert "drift detected" in text and "s0" in text
    assert res.table["purity"].isna().all() and res.table["knn_accuracy"].isna().all()
    assert "Not measured" in text


def test_bad_inputs_name_the_parameter(tmp_path):
    z = np.zeros((4, 2))
    ok = {
        "embeddings": z,
        "cluster_ids": [0, 0, 1, 1],
        "distances": [0.0] * 4,
        "centers": np.zeros((2, 2)),
        "sample_ids": list("abcd"),
    }
    with pytest.raises(ValueError, match="cluster_ids must lie in 0..1"):
        build_report("r", tmp_path, **{**ok, "cluster_ids": [0, 0, 2, 1]})
    with pytest.raises(ValueError, match="distances has 3 values"):
        build_report("r", tmp_path, **{**ok, "distances": [0.0] * 3})
    with pytest.raises(ValueError, match=r"embeddings must have shape \(4, 2\)"):
        build_report("r", tmp_path, **{**ok, "embeddings": np.zeros((4, 3))})
    with pytest.raises(ValueError, match="labels has 2 values"):
        build_report("r", tmp_path, **{**ok, "labels": [1, 2]})


def test_cluster_report_contract(runs):
    from data_contracts.tables import TABLES, ContractViolation
    from sqflow.pipeline.report import CLUSTER_REPORT, validate_cluster_report

    t = runs[1]["res"].table
    pd.testing.assert_frame_equal(validate_cluster_report(t), t, check_dtype=False)
    assert CLUSTER_REPORT is TABLES["cluster_report"]  # the registered contract, not a copy
    assert CLUSTER_REPORT.column_names == list(CLUSTER_REPORT_COLUMNS)
    bad = t.copy()
    bad.loc[2, "purity"] = 1.5
    with pytest.raises(ContractViolation, match="purity"):
        validate_cluster_report(bad)
    bad = t.copy()
    bad.loc[1, "representative_sample_ids"] = "not json"
    with pytest.raises(ContractViolation, match=r"representative_sample_ids.*\[1\]"):
        validate_cluster_report(bad)


def _write_run_json(lay, rec):
    from sqflow.atomic_files import atomic_write_text

    atomic_write_text(lay.run_dir(rec.run_id) / "run.json", rec.to_json())


def _pipeline_run(cfg, lay, monitor_note, write_json=True):
    """One nightly-like run through the pipeline's own stages (as plain functions), with the
    run.json the nightly flow writes."""
    from datetime import UTC, datetime

    from data_contracts.run_record import RunRecord
    from sqflow.layout import new_run_id
    from sqflow.pipeline.cluster import cluster_stage
    from sqflow.pipeline.encoder import embed_stage
    from sqflow.pipeline.sample import sample_stage

    started = datetime.now(UTC)
    run_id = new_run_id(None, started)
    rec = RunRecord(
        run_id=run_id,
        started_at=started.isoformat(),
        status="completed",
        monitor=monitor_note,
        n_clusters=cfg.n_clusters,
    )
    rec.dataset = rec.add_stage("sample", sample_stage(cfg, run_id))["dataset"]
    rec.encoder_version = rec.add_stage("embed", embed_stage(cfg, run_id))["encoder_version"]
    rec.add_stage("cluster", cluster_stage(cfg, run_id))
    if write_json:  # nightly writes it when the run ends (after the report step)
        _write_run_json(lay, rec)
    return run_id, rec


def test_report_of_pipeline_runs(tmp_path, capsys):
    """The loader on two real runs of the pipeline's stages (tiny encoder, MNIST all splits):
    figures equal the run's own assignments, the hold-out is the labeled test-split rows, the
    second run shows the first one's values, the BI file follows the cluster_report contract."""
    import pyarrow.parquet as pq

    from flows.cli import main as sqflow_cli
    from flows.settings import flow_settings
    from sqflow.layout import OutputLayout, version_rows
    from sqflow.pipeline.encoder import train_encoder_stage
    from sqflow.pipeline.report import build_report_for_run, report_stage
    from sqflow.store import open_assignments, open_store

    cfg = flow_settings(
        dict(
            output_dir=str(tmp_path / "out"),
            encoder_train_rows=200,
            encoder_epochs=1,
            reference_rows=50,
            n_clusters=6,
            max_iter=3,
            store_chunk_rows=512,
            dask_workers=1,
            source={"kind": "mnist", "split": "all"},
            sample={"mode": "uniform", "n": 900, "seed": 0},
        )
    )
    lay = OutputLayout.of(cfg)
    train_encoder_stage(cfg)
    note = "not run: drift monitoring is not implemented yet"
    run1, rec1 = _pipeline_run(cfg, lay, note, write_json=False)
    # as in nightly: the in-memory record (full curve), before run.json exists
    info1 = report_stage(cfg, run1, record=rec1)
    _write_run_json(lay, rec1)
    cfg2 = cfg.model_copy(update={"sample": cfg.sample.model_copy(update={"seed": 1})})
    run2, _ = _pipeline_run(cfg2, lay, note)
    html2 = build_report_for_run(cfg.output_dir, run2)  # from run.json only
    assert html2 == lay.run_dir(run2) / "report" / "report.html"
    assert sqflow_cli(["report", "latest", "--output", str(cfg.output_dir)]) == 0
    assert sqflow_cli(["report", "no-such-run", "--output", str(cfg.output_dir)]) == 2
    assert "no run 'no-such-run'" in capsys.readouterr().err
    info2 = report_stage(cfg2, run2)
    for run_id, info in ((run1, info1), (run2, info2)):
        rd = lay.run_dir(run_id)
        store = open_store(rd / "embeddings.zarr")
        cid = open_assignments(store, name=run_id).read_cluster_ids()
        table = pd.read_parquet(info["table"])
        np.testing.assert_array_equal(table["size"], np.bincount(cid, minlength=6))
        manifest = pd.read_parquet(rd / "manifest.parquet")
        # held out = labeled items the encoder version neither trained nor validated on
        vr = version_rows(lay.models_dir, store.encoder_version)
        trained = set(vr.loc[vr["role"] == "train", "sample_id"])
        held = manifest[(manifest["label"] >= 0) & ~manifest["sample_id"].isin(trained)]
        assert info["quality"]["n_heldout"] == len(held) > 0
        used = set(pd.read_parquet(rd / "report" / "heldout.parquet")["sample_id"])
        assert used == set(held["sample_id"]) and not used & trained
        ids = set(manifest["sample_id"])
        for rep in table["representative_sample_ids"]:
            assert set(json.loads(rep)) <= ids
        bi = pq.read_table(info["bi_parquet"])
        meta = json.loads(bi.schema.metadata[b"sqflow.contract"])
        assert meta["table"] == "cluster_report" and bi.num_rows == 6
        text = Path(info["html"]).read_text()
        assert "drift monitor did not run" in text and run_id in text
        dom = _parse(text)
        for src in dom.imgs:
            _png_ok(src)
    # convergence: full loss_curve_ from the in-memory record, per-pass estimates from run.json
    assert "block of samples" in Path(info1["html"]).read_text()
    assert "pass over the data" in Path(info2["html"]).read_text()
    prev = pd.read_parquet(info1["table"])
    assert info2["quality"]["previous_run_id"] == run1
    assert info2["quality"]["previous"]["knn_accuracy"] == pytest.approx(
        prev["knn_accuracy"].iloc[0]
    )
    check_page_figures(
        _parse(Path(info2["html"]).read_text()), pd.read_parquet(info2["table"]), prev
    )
    assert len(info2["rows"]) == 6 and all(type(r["size"]) is int for r in info2["rows"])


def test_streamed_embeddings_and_large_images(tmp_path):
    """Embeddings as a Dask array are only read for the rows drawn (same picture as NumPy);
    big images are shrunk to thumbnails so the page stays small."""
    import dask.array as da

    rng = np.random.default_rng(3)
    centers = rng.normal(size=(4, 3)) * 5
    z = np.concatenate([c + rng.normal(size=(300, 3)) for c in centers])
    cid = ((z[:, None] - centers[None]) ** 2).sum(-1).argmin(1)
    dist = np.linalg.norm(z - centers[cid], axis=1)
    ids = [f"s{i:04d}" for i in range(len(z))]
    big = rng.integers(0, 256, size=(400, 300), dtype=np.uint8)
    common = {
        "cluster_ids": cid,
        "distances": dist,
        "centers": centers,
        "sample_ids": ids,
        "max_plot_points": 500,
        "thumbnails": lambda q: [big] * len(q),
    }
    r_np = build_report("np", tmp_path / "np", embeddings=z, **common)
    r_da = build_report(
        "da", tmp_path / "da", embeddings=da.from_array(z, chunks=(256, 3)), **common
    )
    np.testing.assert_array_equal(r_np.data.plot_rows, r_da.data.plot_rows)
    np.testing.assert_allclose(r_np.data.plot_embeddings, r_da.data.plot_embeddings)
    assert len(r_da.data.plot_rows) == 500
    thumbs = [
        _png_ok(s)
        for s in _parse(r_da.html_path.read_text()).imgs
        if s and _png_ok(s).size[0] < 200
    ]
    assert thumbs and all(max(im.size) <= 96 for im in thumbs)


def test_engine_does_not_import_prefect():
    import subprocess
    import sys

    code = (
        "import sys, sqflow.report, sqflow.report.render; "
        "sys.exit(1 if any(m == 'prefect' or m.startswith('prefect.') for m in sys.modules)"
        " else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0, (
        "sqflow.report imports prefect (layer rule: the engine never does)"
    )


def test_previous_runs_trend_only_with_the_same_encoder_and_k(tmp_path):
    from sqflow.layout import OutputLayout
    from sqflow.pipeline.report import _previous_runs

    lay = OutputLayout.at(tmp_path)
    recs = [
        ("20261120T020000Z-00000001", "triplet-v0001", 3, "completed"),
        ("20261121T020000Z-00000002", "triplet-v0002", 3, "completed"),
        ("20261122T020000Z-00000003", "triplet-v0002", 4, "completed"),
        ("20261123T020000Z-00000004", "triplet-v0002", 3, "failed"),
        ("20261125T020000Z-00000005", "triplet-v0002", 3, "completed"),
    ]  # later: excluded
    for rid, ver, k, status in recs:
        d = lay.run_dir(rid)
        d.mkdir(parents=True)
        (d / "run.json").write_text(
            json.dumps(
                {
                    "run_id": rid,
                    "started_at": rid[:8],
                    "status": status,
                    "encoder_version": ver,
                    "n_clusters": k,
                    "cluster": {"clusters": [{"cluster_id": j, "size": 10 + j} for j in range(k)]},
                }
            )
        )
    prev = _previous_runs(lay, "now", "20261124", "triplet-v0002", 3)
    assert [p.run_id for p in prev] == [r[0] for r in recs[:3]]
    assert prev[0].sizes == {} and prev[2].sizes == {}  # other encoder / other k
    assert prev[1].sizes == {0: 10, 1: 11, 2: 12}


def test_drift_from_the_monitor_files_or_record(tmp_path):
    from data_contracts.run_record import RunRecord
    from sqflow.pipeline.report import _drift

    rd = tmp_path / "run"
    rd.mkdir()
    # the monitor's record shape (sqflow.pipeline.monitor): statistics rows named "statistic"
    rec = RunRecord(
        run_id="r",
        started_at="2026-11-30",
        **{
            "monitor": {
                "drifted": None,
                "status": "insufficient_data",
                "reasons": ["batch has 12 rows; at least 50 are needed"],
                "statistics": [],
            }
        },
    )
    d, note = _drift(rd, rec)
    assert note is None and d["drifted"] is None and d["status"] == "insufficient_data"
    # drift_report.json written by the monitor (DriftReport.to_dict: statistics named "name")
    (rd / "drift_report.json").write_text(
        json.dumps(
            {
                "drifted": True,
                "status": "ok",
                "reasons": ["mmd flags drift"],
                "statistics": [
                    {
                        "name": "mmd",
                        "value": 0.3,
                        "threshold": 0.01,
                        "p_value": 0.002,
                        "drifted": True,
                        "detail": {},
                    }
                ],
            }
        )
    )
    old = {"run_id": "r", "started_at": "2026-11-30"}  # a version-0 run.json: a note string
    d, note = _drift(rd, RunRecord(**old, monitor="not run: whatever"))
    assert d["statistics"][0]["statistic"] == "mmd" and d["drifted"] is True
    d, note = _drift(tmp_path, RunRecord(**old, monitor="not run: drift monitoring is off"))
    assert d is None and note == (
        "The drift monitor did not run for this run: drift monitoring is off."
    )


@pytest.fixture(scope="module")
def one_pipeline_run(tmp_path_factory):
    """One run through the pipeline's own stages (tiny encoder), its report not yet built."""
    from flows.settings import flow_settings
    from sqflow.layout import OutputLayout
    from sqflow.pipeline.encoder import train_encoder_stage

    out = tmp_path_factory.mktemp("one-run") / "out"
    cfg = flow_settings(
        dict(
            output_dir=str(out),
            encoder_train_rows=200,
            encoder_epochs=1,
            reference_rows=50,
            n_clusters=4,
            max_iter=2,
            store_chunk_rows=256,
            dask_workers=1,
            source={"kind": "mnist", "split": "all"},
            sample={"mode": "uniform", "n": 700, "seed": 0},
        )
    )
    lay = OutputLayout.of(cfg)
    train_encoder_stage(cfg)
    run_id, _ = _pipeline_run(cfg, lay, "not run: not needed here")
    return cfg, run_id


@pytest.mark.parametrize("how", ["flip", "swap", "delete"])
def test_report_stage_refuses_a_damaged_embedding_chunk(one_pipeline_run, tmp_path, how):
    """The report reads its sampled and held-out rows through the store's verified chunk
    reads: a damaged chunk of a real store on disk raises the same StoreIntegrityError as the
    cluster stage's reader (store, array and chunk named); nothing of the report is written.
    A swap of two chunk files decodes cleanly, so only the commit digest can catch it."""
    import re
    import shutil

    from sqflow.layout import OutputLayout
    from sqflow.pipeline.report import report_dir, report_stage
    from sqflow.store import StoreIntegrityError, open_store

    cfg0, run_id = one_pipeline_run
    cfg = cfg0.model_copy(update={"output_dir": tmp_path / "out"})
    shutil.copytree(cfg0.output_dir, cfg.output_dir)
    lay = OutputLayout.of(cfg)
    path = lay.run_dir(run_id) / "embeddings.zarr"
    assert open_store(path).n_chunks == 3
    chunk = path / "embedding" / "c" / "1" / "0"
    if how == "flip":
        data = bytearray(chunk.read_bytes())
        data[len(data) // 2] ^= 0x40
        chunk.write_bytes(bytes(data))
    elif how == "swap":
        other = path / "embedding" / "c" / "0" / "0"
        a, b = chunk.read_bytes(), other.read_bytes()
        chunk.write_bytes(b)
        other.write_bytes(a)
    else:
        chunk.unlink()
    # the same message the store's own readers give (chunks read in parallel: after a swap
    # either of the two may fail first)
    want = "[01]" if how == "swap" else "1"
    where = rf"embedding store at {re.escape(str(path))}: array 'embedding' chunk {want} \(rows "
    with pytest.raises(StoreIntegrityError, match=where):
        report_stage(cfg, run_id)
    with pytest.raises(StoreIntegrityError, match=where):
        open_store(path).to_dask().sum().compute()
    assert not (report_dir(lay, run_id) / "report.html").exists()
