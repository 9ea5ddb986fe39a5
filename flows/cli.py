"""The ``sqflow`` command line.

Sub-commands register themselves in ``COMMANDS``; each is a function ``(argv) -> int``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def _cluster(argv: list[str]) -> int:
    """Cluster the built-in MNIST pixels (or synthetic blobs) with SQ; print objective and sizes."""
    from sqflow import StochasticQuantization
    from sqflow.optimizers import OPTIMIZER_CODES

    ap = argparse.ArgumentParser(prog="sqflow cluster", description=_cluster.__doc__)
    ap.add_argument(
        "--data",
        choices=["mnist", "blobs"],
        default="mnist",
        help="built-in MNIST training pixels (60,000 x 784) or 100,000 3-D blobs",
    )
    ap.add_argument("--n-clusters", type=int, default=10, help="number of clusters K (default 10)")
    ap.add_argument(
        "--optimizer",
        choices=sorted(OPTIMIZER_CODES),
        default="sgd",
        help="SQ update rule (default sgd)",
    )
    ap.add_argument("--rank", type=float, default=3.0, help="exponent r of the distance (>= 1)")
    ap.add_argument(
        "--batch-size", type=int, default=1, help="rows per SQ step (default 1: the paper's SQ)"
    )
    ap.add_argument("--max-iter", type=int, default=10, help="passes over the data (default 10)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = ap.parse_args(argv)

    if args.data == "mnist":
        from sqflow.datasets import load_mnist

        images, labels = load_mnist("train")
        X = images.reshape(len(images), -1).astype(np.float32) / 255.0
    else:
        from sklearn.datasets import make_blobs

        X, labels = make_blobs(
            100_000, n_features=3, centers=args.n_clusters, random_state=args.seed
        )
    print(f"data: {args.data}, {X.shape[0]} rows x {X.shape[1]} features")
    est = StochasticQuantization(
        args.n_clusters,
        optimizer=args.optimizer,
        rank=args.rank,
        batch_size=args.batch_size,
        max_iter=args.max_iter,
        random_state=args.seed,
        verbose=1,
    )
    t = time.perf_counter()
    est.fit(X)
    elapsed = time.perf_counter() - t
    print(
        f"SQ-{args.optimizer} r={args.rank:g}: objective {est.objective_:.6g} "
        f"(mean of min_k ||x - y_k||^r) after {est.n_iter_} passes, {est.n_steps_} steps, {elapsed:.2f} s"
    )
    sizes = np.bincount(est.labels_, minlength=args.n_clusters)
    print("cluster sizes:")
    for k, size in enumerate(sizes):
        line = f"  cluster {k:>3}: {size:>7}"
        if labels is not None:
            members = labels[est.labels_ == k]
            if members.size:
                top = np.bincount(members).argmax()
                line += f"   majority label {top} ({np.mean(members == top):.0%})"
        print(line)
    return 0


# ---------------------------------------------------------------------------- pipeline commands
def _prefect_env() -> None:
    """Offline-friendly Prefect defaults (the user's own settings win)."""
    import os

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # the ephemeral API server needs more than Prefect's default 20 s on a busy 2-core machine
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def _print_run(result: dict, wall: float) -> None:
    from data_contracts.run_record import RunRecord

    rec = RunRecord.model_validate(result)
    s, c = rec.sample or {}, rec.cluster or {}
    print()
    print(
        f"sqflow nightly run {rec.run_id}: {rec.status} in {wall:.1f} s "
        f"(flow {rec.timings['total']:.1f} s)"
    )
    print(
        f"  items: {s['n_scanned']} found, {s['n_quarantined']} quarantined, "
        f"{s['n_selected']} in this run ({s['n_labeled']} labeled)"
    )
    print(f"  encoder: {rec.encoder_version}" + (" (trained in this run)" if rec.train else ""))
    mon = rec.monitor if isinstance(rec.monitor, dict) else {}
    if mon.get("error"):
        line = f"FAILED ({mon['error']}), no drift decision"
    else:  # the retrain message adds something only when drift was found
        line = mon["status"].replace("_", " ")
        if mon["retrain"]["status"] not in ("not needed", "no decision"):
            line += f"; {mon['retrain']['message']}"
    print("  monitor: " + line)
    print(
        f"  SQ objective {c['objective']:.6g} after {c['n_iter']} passes; "
        f"warm start: {c['warm_start_from'] or 'no (k-means++)'}"
    )
    if not s["n_labeled"]:
        print("  no labels in this run: no majority label, purity or accuracy")
    if rec.retrain_outcome not in (None, "none"):
        print(f"  retrain: {rec.retrain_outcome} (version {rec.new_encoder_version})")
    print("  cluster  size   majority label (purity)")
    for row in rec.clusters:
        maj = (
            "-"
            if row["majority_label"] is None
            else f"{row['majority_label']} ({row['label_purity']:.0%})"
        )
        print(f"  {row['cluster_id']:>7} {row['size']:>6}   {maj}")
    print("  stage timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in rec.timings.items()))
    print("outputs:")
    for k, v in rec.outputs.items():
        print(f"  {k:<18} {v}")
    for k in ("latent", "convergence"):
        print(f"  {k + ' plot':<18} {(rec.plots or {})[k]}")
    print(f"  {'summary':<18} {rec.outputs['run folder']}/summary.md")
    if rec.stage_error("report"):
        print(f"  cluster report FAILED: {rec.stage_error('report')}")


def _common_flags(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--output", default=None, help="output folder (default ./sqflow-output)")
    ap.add_argument("--config", default=None, help="TOML settings file (default ./sqflow.toml)")


def _apply_config(args) -> None:
    import os

    if args.config:
        os.environ["SQFLOW_CONFIG"] = args.config
    _prefect_env()  # before the cron check below imports Prefect (it reads the environment)
    from flows.settings import load_settings

    load_settings()  # bad settings fail here, naming field and file, before a flow starts


def _unlabeled_mnist(output: str) -> Path:
    """The 70,000 MNIST images (train then test) as ``<output>/demo-unlabeled/mnist.npy``,
    no labels (written once, atomically)."""
    from sqflow.atomic_files import atomic_save_npy
    from sqflow.datasets import load_mnist

    path = Path(output).expanduser().resolve() / "demo-unlabeled" / "mnist.npy"
    if not path.exists():
        x = np.concatenate([load_mnist("train")[0], load_mnist("test")[0]])
        atomic_save_npy(path, x)
    return path


def _demo(argv: list[str]) -> int:
    """Run the whole nightly flow on the built-in MNIST (trains the encoder first if needed)."""
    ap = argparse.ArgumentParser(prog="sqflow demo", description=_demo.__doc__)
    _common_flags(ap)
    ap.add_argument(
        "--sample-n",
        type=int,
        default=10000,
        help="images drawn from the 70,000 (default 10000; 0 = all)",
    )
    ap.add_argument("--epochs", type=int, default=3, help="encoder epochs if one is trained")
    ap.add_argument(
        "--train-rows",
        type=int,
        default=6000,
        help="training images (labeled or not) for the encoder if one is trained",
    )
    ap.add_argument("--n-clusters", type=int, default=10, help="number of clusters K (default 10)")
    ap.add_argument(
        "--no-labels",
        action="store_true",
        help="drop every label: the 70,000 images are written to <output>/demo-unlabeled/"
        "mnist.npy without a label file and read from there (label-free encoder and report)",
    )
    args = ap.parse_args(argv)
    _apply_config(args)
    _prefect_env()
    from flows.nightly import nightly

    source: dict[str, Any] = {"kind": "mnist", "split": "all"}
    if args.no_labels:
        source = {"kind": "npy", "path": str(_unlabeled_mnist(args.output or "sqflow-output"))}
    sample = (
        {"mode": "all"}
        if args.sample_n <= 0
        else {"mode": "uniform", "n": args.sample_n, "seed": 0}
    )
    config = {
        "output_dir": args.output or "sqflow-output",
        "source": source,
        "sample": sample,
        "encoder_epochs": args.epochs,
        "encoder_train_rows": args.train_rows,
        "n_clusters": args.n_clusters,
        "train_if_missing": True,
    }
    print(
        "sqflow demo: nightly flow on the built-in MNIST"
        + (" with every label dropped" if args.no_labels else "")
        + " with ephemeral Prefect and a Dask LocalCluster"
    )
    t = time.perf_counter()
    rec = nightly(config=config)
    _print_run(rec, time.perf_counter() - t)
    print("\n" + _ui_hint(rec["flow_run_id"]))
    return 0


def _ui_hint(flow_run_id: str | None) -> str:
    """Where to see a flow run in the Prefect UI, with the real address: the server this
    process talked to (``PREFECT_UI_URL`` / ``PREFECT_API_URL``), else how to start one on the
    database the ephemeral run wrote to."""
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

    api = PREFECT_API_URL.value()
    if api:
        ui = (PREFECT_UI_URL.value() or api.removesuffix("/api")).rstrip("/")
        return f"See the run in the Prefect UI: {ui}/runs/flow-run/{flow_run_id}"
    return (
        "This run used an ephemeral Prefect API (no server). To see it in the Prefect UI run "
        "`sqflow ui --port PORT` (default 4200; it serves the same database, PREFECT_HOME) and "
        f"open http://127.0.0.1:PORT/runs/flow-run/{flow_run_id}"
    )


def _nightly(argv: list[str]) -> int:
    """Run the nightly flow once with the settings (sqflow.toml, SQFLOW_* variables, --output;
    see `sqflow config`)."""
    ap = argparse.ArgumentParser(prog="sqflow nightly", description=_nightly.__doc__)
    _common_flags(ap)
    args = ap.parse_args(argv)
    _apply_config(args)
    _prefect_env()
    from flows.nightly import nightly

    t = time.perf_counter()
    rec = nightly(config={"output_dir": args.output} if args.output else None)
    _print_run(rec, time.perf_counter() - t)
    print("\n" + _ui_hint(rec["flow_run_id"]))
    return 0


def _train(argv: list[str]) -> int:
    """Train, register and make current a new encoder version (and embed its reference set)."""
    ap = argparse.ArgumentParser(prog="sqflow train-encoder", description=_train.__doc__)
    _common_flags(ap)
    args = ap.parse_args(argv)
    _apply_config(args)
    _prefect_env()
    from flows.nightly import train_encoder_flow

    out = train_encoder_flow(config={"output_dir": args.output} if args.output else None)
    print(
        f"registered {out['version']} (sha256 {out['encoder_hash'][:12]}); reference set at "
        f"{out['reference_store']}"
    )
    return 0


def _serve(argv: list[str]) -> int:
    """Serve the nightly schedule and the drift-triggered retrain from this one process
    (deployments named *-served; `prefect deploy --all` keeps its own)."""
    ap = argparse.ArgumentParser(prog="sqflow serve", description=_serve.__doc__)
    _common_flags(ap)
    ap.add_argument("--cron", default=None, help="cron of the nightly run (default '0 2 * * *')")
    ap.add_argument("--timezone", default=None, help="IANA timezone of the cron (default UTC)")
    args = ap.parse_args(argv)
    _apply_config(args)
    _prefect_env()
    from prefect import serve

    from flows.deployments import served_deployments

    serve(*served_deployments(output=args.output, cron=args.cron, timezone=args.timezone))
    return 0


def _ui(argv: list[str]) -> int:
    """Start the Prefect server and UI on 127.0.0.1 (runs of `sqflow demo` show up there)."""
    import os
    import shutil
    from pathlib import Path

    ap = argparse.ArgumentParser(prog="sqflow ui", description=_ui.__doc__)
    ap.add_argument(
        "--port", type=int, default=4200, help="port of the server and UI (default 4200)"
    )
    ap.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; the server has no auth unless "
        "PREFECT_SERVER_API_AUTH_STRING is set)",
    )
    args = ap.parse_args(argv)
    _prefect_env()
    env = dict(os.environ)
    env["PREFECT_UI_API_URL"] = f"http://{args.host}:{args.port}/api"
    exe = Path(sys.executable).with_name("prefect")
    cmd = [
        str(exe) if exe.exists() else (shutil.which("prefect") or "prefect"),
        "server",
        "start",
        "--host",
        args.host,
        "--port",
        str(args.port),
    ]
    print(f"Prefect UI: http://{args.host}:{args.port}  (Ctrl-C stops it)")
    os.execvpe(cmd[0], cmd, env)
    return 0  # pragma: no cover - exec does not return


def _paper(argv: list[str]) -> int:
    """Reproduce the paper's semi-supervised MNIST table (Triplet encoder + SQ)."""
    from sqflow.paper import main as paper_main

    return paper_main(argv)


def _report(argv: list[str]) -> int:
    """Build the cluster report (HTML) of a finished run: sqflow report RUN_ID|latest."""
    import os

    from sqflow.layout import OutputLayout
    from sqflow.pipeline.report import build_report_for_run

    ap = argparse.ArgumentParser(prog="sqflow report", description=_report.__doc__)
    ap.add_argument(
        "run_id",
        help="the run id (runs/<RUN_ID> in the output folder) or "
        "'latest' for the latest completed run",
    )
    ap.add_argument(
        "--output",
        default=os.environ.get("SQFLOW_OUTPUT_DIR", "sqflow-output"),
        help="the pipeline's output folder (default: $SQFLOW_OUTPUT_DIR or ./sqflow-output)",
    )
    ap.add_argument(
        "--models-dir",
        default=os.environ.get("SQFLOW_MODELS_DIR"),
        help="model registry (default <output>/models)",
    )
    args = ap.parse_args(argv)
    lay = OutputLayout.at(args.output, args.models_dir)
    run_id = args.run_id
    if run_id == "latest":
        done = [r.run_id for r in lay.run_records() if r.completed]
        if not done:
            print(f"sqflow report: no completed run in {str(lay.root)!r}", file=sys.stderr)
            return 2
        run_id = done[-1]
    try:
        path = build_report_for_run(lay.root, run_id, models_dir=lay.models_dir)
    except FileNotFoundError as exc:
        print(f"sqflow report: {exc}", file=sys.stderr)
        return 2
    print(
        f"cluster report of run {run_id}:\n  {path}\n  open it in a browser "
        f"(file://{path}); it is self-contained and works offline"
    )
    return 0


def _schemas(argv: list[str]) -> int:
    """Write the data contracts' JSON Schemas (data_contracts/schemas/); --check: exit 1 if stale."""
    from data_contracts import drift_policy, manifest, store, tables

    ap = argparse.ArgumentParser(prog="sqflow schemas", description=_schemas.__doc__)
    ap.add_argument("--check", action="store_true", help="exit 1 if a committed file is stale")
    args = ap.parse_args(argv)
    stale = [
        p
        for module in (tables, manifest, store, drift_policy)
        for p in module.export_schemas(check=args.check)
    ]
    if args.check and stale:
        print("stale (run `sqflow schemas`): " + ", ".join(map(str, stale)), file=sys.stderr)
        return 1
    for p in stale:
        print(f"wrote {p}")
    return 0


def _verify(argv: list[str]) -> int:
    """Check embedding stores end to end (every chunk's checksum and digest, committed rows,
    identity attributes, assignment outputs); exit 1 if any is damaged."""
    from sqflow.store import verify_store

    ap = argparse.ArgumentParser(prog="sqflow verify", description=_verify.__doc__)
    ap.add_argument("stores", nargs="+", metavar="STORE", help="path or URL of a store")
    ap.add_argument("--json", action="store_true", help="print one JSON report per store")
    args = ap.parse_args(argv)
    ok = True
    for path in args.stores:
        report = verify_store(path)
        print(json.dumps(report.to_dict()) if args.json else report.summary())
        ok = ok and report.ok
    return 0 if ok else 1


def _config(argv: list[str]) -> int:
    """Print the effective settings, where each comes from (default, TOML, environment) and
    the SQFLOW_* variable that sets it."""
    from flows.settings import _config_file, settings_sources

    ap = argparse.ArgumentParser(prog="sqflow config", description=_config.__doc__)
    ap.add_argument("--config", default=None, help="TOML settings file (default ./sqflow.toml)")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = ap.parse_args(argv)
    _apply_config(args)
    try:
        rows = settings_sources()
    except (ValueError, FileNotFoundError) as exc:  # invalid settings: say which and why
        print(f"sqflow config: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    path = _config_file()
    print(f"settings file: {path} ({'found' if path.is_file() else 'absent'}; SQFLOW_CONFIG)")
    print("precedence: flags > SQFLOW_* environment > TOML > default\n")
    w = max(len(r["name"]) for r in rows)
    print(f"{'setting':<{w}}  {'value':<28} {'source':<12} variable")
    for r in rows:
        value = json.dumps(r["value"])
        source = "TOML" if r["source"].startswith("TOML") else r["source"]
        print(f"{r['name']:<{w}}  {value:<28} {source:<12} {r['env']}")
    print(
        "\nalso read: SQFLOW_POSTGRES_URL (PostgreSQL URL for the BI tables; never printed), "
        "SQFLOW_CONFIG (the settings file)"
    )
    return 0


COMMANDS = {
    "cluster": _cluster,
    "demo": _demo,
    "nightly": _nightly,
    "train-encoder": _train,
    "serve": _serve,
    "ui": _ui,
    "paper": _paper,
    "report": _report,
    "schemas": _schemas,
    "config": _config,
    "verify": _verify,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-V", "--version"):
        from importlib.metadata import version

        print(f"sqflow {version('sqflow')}")
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: sqflow [--version] COMMAND [options]   (sqflow COMMAND --help for its flags)")
        print("\ncommands:")
        for name, fn in COMMANDS.items():
            summary = " ".join((fn.__doc__ or "").strip().split("\n\n")[0].split())
            print(f"  {name:<14} {summary}")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"sqflow: unknown command {name!r}; valid: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    from flows.settings import SettingsError

    try:
        return COMMANDS[name](rest)
    except SettingsError as exc:
        print(f"sqflow {name}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
