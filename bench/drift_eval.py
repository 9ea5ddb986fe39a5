"""Drift monitor evaluation on MNIST embeddings (issue 7): false alarms, detection per shift,
gradual drift, for the default policy and for each statistic alone.

    python bench/drift_eval.py                      # full run (JSON + MD in bench/results/)
    python bench/drift_eval.py --n-null 20 --n-shift 10 --n-sequences 2 --out /tmp/x  # quick
    python bench/drift_eval.py --distortion-null --repetitions 100   # p-value validity study

Protocol
--------
- Encoder A (all ten digits): the paper recipe at 5 % labeled (stratified 5 % of each class of
  the 60,000 training images, PAPER.md CNN, latent 3, batch 256, <= 50 epochs with early
  stopping). When ``sqflow-output/paper_cache`` holds the paper table's 5 % encoder it is reused
  (its checkpoint is hash-verified on load); otherwise it is trained here with the same recipe.
- Encoder B ("unseen class"): the same recipe on the training images WITHOUT digit
  ``--heldout-digit`` (default 9, fixed before any run).
- Reference: 10,000 training images the encoder did NOT train on (unlabeled part), embedded;
  centers: SQ (K = 10, r = 3, seed 0) fitted on that reference. For B, reference and centers come
  from the nine known digits only.
- Batches: ``--batch-size`` (2,000) held-out TEST images, drawn uniformly WITHOUT replacement
  inside a batch, independently per batch (so batches overlap each other: the 10,000 test images
  are one finite pool; rates are over batches, not independent populations).
- Shifts are applied to the test images before embedding (scipy.ndimage for rotation and blur):
  rotation 15 (below spec) / 30 / 45 / 90 degrees, Gaussian pixel noise sigma 0.1 / 0.3 (pixels
  in [0, 1], clipped), Gaussian blur sigma 1 / 1.5 px, contrast x0.5 / x0.3 (pixel values
  scaled), class prior "only digits 0-4", class prior "no digit 1", and with encoder B batches of
  the nine known digits with 10 % (its natural share) or 30 % of the unseen digit.
- Gradual drift: nights 0..N with share 5 % x night of 30-degree-rotated images; the first night
  flagged, per sequence.
- Every call of ``detect_drift`` gets its own seed (subsamples, permutations).
- Rates are reported for the default policy, for "k of 4 statistics agree" (k = 1..4) and for each
  statistic alone, at the default alpha = 0.01 and at 0.05 (recomputed from the stored p-values
  and effect sizes, so every row comes from the same batches).
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._report import machine  # noqa: E402
from data_contracts.drift_policy import ALL_STATISTICS, DriftPolicy  # noqa: E402

log = logging.getLogger("drift_eval")

SHIFTS = {
    "rotate-15": ("rotate", 15.0),
    "rotate-30": ("rotate", 30.0),
    "rotate-45": ("rotate", 45.0),
    "rotate-90": ("rotate", 90.0),
    "noise-0.1": ("noise", 0.1),
    "noise-0.3": ("noise", 0.3),
    "blur-1.0": ("blur", 1.0),
    "blur-1.5": ("blur", 1.5),
    "contrast-0.5": ("contrast", 0.5),
    "contrast-0.3": ("contrast", 0.3),
}
IN_SPEC = {
    "rotate-30",
    "rotate-45",
    "rotate-90",
    "noise-0.1",
    "noise-0.3",
    "blur-1.0",
    "blur-1.5",
    "contrast-0.5",
    "contrast-0.3",
    "prior-digits-0-4",
    "prior-no-1",
    "unseen-10pct",
    "unseen-30pct",
}


def apply_shift(images: np.ndarray, kind: str, amount: float, seed: int) -> np.ndarray:
    """Shifted copy of uint8 images (N, 28, 28) as float32 in [0, 1]."""
    from scipy import ndimage

    x = images.astype(np.float32) / 255.0
    if kind == "rotate":
        out = ndimage.rotate(x, amount, axes=(1, 2), reshape=False, order=1, mode="constant")
    elif kind == "noise":
        out = x + np.random.default_rng(seed).normal(0.0, amount, size=x.shape).astype(np.float32)
    elif kind == "blur":
        out = ndimage.gaussian_filter(x, sigma=(0, amount, amount))
    elif kind == "contrast":
        out = x * amount
    else:
        raise ValueError(f"unknown shift kind {kind!r}")
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------------- encoders
def _labeled_mask(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    from sqflow.paper import labeled_mask

    return labeled_mask(y, fraction, np.random.default_rng([seed, int(round(fraction * 1e6))]))


def get_encoder(
    name: str, x: np.ndarray, y: np.ndarray, args: argparse.Namespace, reuse: str | None
) -> tuple[Any, np.ndarray, dict[str, Any]]:
    """(encoder, labeled mask over x, info). Reuses ``reuse`` (a checkpoint) if given and
    present, else a cached one in ``args.cache_dir/name``, else trains."""
    from sqflow.embedding import TripletEncoder, train_encoder

    mask = _labeled_mask(y, args.fraction, args.seed)
    for path in ([reuse] if reuse else []) + [str(Path(args.cache_dir) / name / "encoder.pt")]:
        if path and Path(path).is_file():
            enc = TripletEncoder.load(path, device="cpu")
            log.info("%s: reusing encoder %s", name, path)
            return (
                enc,
                mask,
                {
                    "checkpoint": path,
                    "trained_here": False,
                    "n_labeled": int(enc.metadata.get("n_labeled", mask.sum())),
                    "val_knn1": _val(enc),
                },
            )
    t0 = time.perf_counter()
    enc = train_encoder(
        x,
        np.where(mask, y, -1).astype(np.int64),
        latent_dim=3,
        epochs=args.epochs,
        batch_size=256,
        seed=args.seed,
        patience=5,
        device="cpu",
        progress=False,
        max_seconds=args.encoder_max_seconds,
    )
    out = Path(args.cache_dir) / name / "encoder.pt"
    enc.save(out)
    return (
        enc,
        mask,
        {
            "checkpoint": str(out),
            "trained_here": True,
            "n_labeled": int(mask.sum()),
            "train_seconds": time.perf_counter() - t0,
            "val_knn1": _val(enc),
        },
    )


def _val(enc: Any) -> float | None:
    v = [a for a in enc.metadata.get("metrics", {}).get("val_knn1_accuracy", []) if a is not None]
    return float(v[-1]) if v else None


# ----------------------------------------------------------------------------- evaluation
def _flags(rep: Any, alpha: float) -> dict[str, bool]:
    """Per-statistic flags at ``alpha`` (same effect-size floors as the policy)."""
    pol = DriftPolicy.model_validate(rep.policy)
    out = {}
    for s in rep.statistics:
        ok = s.p_value is not None and s.p_value <= alpha
        if s.name == "distortion":
            ok = ok and s.value >= pol.distortion_min_ratio
        elif s.name == "occupancy":
            ok = ok and s.value >= pol.occupancy_min_psi
        out[s.name] = bool(ok)
    return out


def run_batches(
    ref: np.ndarray,
    centers: np.ndarray,
    batches: list[np.ndarray],
    seed0: int,
    policy: DriftPolicy,
    fit_rows: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    from sqflow.drift import detect_drift

    rows = []
    for i, b in enumerate(batches):
        rep = detect_drift(
            ref, b, centers=centers, policy=policy, seed=seed0 + i, centers_fit_rows=fit_rows
        )
        rows.append(
            {
                "drifted": bool(rep.drifted),
                "values": {s.name: float(s.value) for s in rep.statistics},
                "p": {s.name: s.p_value for s in rep.statistics},
                "flags": {"0.01": _flags(rep, 0.01), "0.05": _flags(rep, 0.05)},
            }
        )
    return rows


def summarize(rows: list[dict[str, Any]], default_alpha: float) -> dict[str, Any]:
    n = len(rows)
    out: dict[str, Any] = {
        "n_batches": n,
        "policy_rate": float(np.mean([r["drifted"] for r in rows])),
    }
    for a in ("0.01", "0.05"):
        f = np.array([[r["flags"][a][s] for s in ALL_STATISTICS] for r in rows], dtype=bool)
        out[f"alpha_{a}"] = {
            **{s: float(f[:, j].mean()) for j, s in enumerate(ALL_STATISTICS)},
            **{f"{k}_of_4": float((f.sum(1) >= k).mean()) for k in range(1, 5)},
        }
    out["median_values"] = {
        s: float(np.median([r["values"][s] for r in rows])) for s in ALL_STATISTICS
    }
    out["q99_values"] = {
        s: float(np.quantile([r["values"][s] for r in rows], 0.99)) for s in ALL_STATISTICS
    }
    return out


def sample_batch(pool: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(pool, size=size, replace=False))


def setting(
    name: str,
    enc: Any,
    mask: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    keep_train: np.ndarray,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Reference (10,000 unlabeled training images of the kept classes), centers fitted on a
    seeded half of it (as production does, ``reference_centers``); the center-based tests use
    the other half."""
    from sqflow import StochasticQuantization

    rng = np.random.default_rng([args.seed, 7])
    pool = np.flatnonzero(~mask & keep_train)
    ref_idx = np.sort(rng.choice(pool, size=min(args.reference_rows, len(pool)), replace=False))
    ref = enc.embed(x[ref_idx])
    fit = np.sort(rng.permutation(len(ref))[: len(ref) // 2])
    centers = StochasticQuantization(10, rank=3.0, random_state=0).fit(ref[fit]).cluster_centers_
    log.info("%s: reference %s embedded, centers fitted on %d rows", name, ref.shape, len(fit))
    return {"ref": ref, "centers": np.asarray(centers, dtype=np.float64), "fit_rows": fit}


def mixture(n: int, rng: np.random.Generator, k: int = 10, d: int = 3) -> np.ndarray:
    """n rows of a fixed 3-D Gaussian mixture (k components, centers from seed 12345, unit
    spread): the in-distribution data of the distortion null study."""
    means = np.random.default_rng(12345).normal(scale=4.0, size=(k, d))
    comp = rng.integers(0, k, size=n)
    return means[comp] + rng.normal(size=(n, d))


def distortion_null(
    sizes: list[int], reps: int, batch_rows: int, seed: int, permutations: int
) -> dict[str, Any]:
    """False-alarm rate of the distortion test's p-value on in-distribution batches, centers fitted
    in-sample (on the whole reference the test compares against: the old behaviour) or on a
    seeded half of it with the test on the other half (``centers_fit_rows``: production now).
    Each repetition: a fresh reference of ``n`` rows and a batch of ``batch_rows`` rows of
    :func:`mixture`; SQ K = 10, r = 3. Rate = share of repetitions with p <= alpha."""
    from sqflow import StochasticQuantization
    from sqflow.drift import detect_drift

    pol = DriftPolicy(
        statistics=["distortion"],
        distortion_permutations=permutations,
        max_reference_rows=max(sizes),
        min_reference_rows=min(100, min(sizes)),
    )
    out: dict[str, Any] = {}
    for n in sizes:
        p_in, p_split = [], []
        t = time.perf_counter()
        for r in range(reps):
            rng = np.random.default_rng([seed, n, r])
            ref, bat = mixture(n, rng), mixture(batch_rows, rng)
            fit = np.sort(rng.permutation(n)[: n // 2])
            for rows, acc in ((np.arange(n), p_in), (fit, p_split)):
                c = StochasticQuantization(10, rank=3.0, random_state=r).fit(ref[rows])
                rep = detect_drift(
                    ref,
                    bat,
                    centers=np.asarray(c.cluster_centers_, dtype=np.float64),
                    policy=pol,
                    seed=r,
                    centers_fit_rows=None if len(rows) == n else rows,
                )
                acc.append(rep.statistics[0].p_value)
        p_in_a, p_split_a = np.array(p_in), np.array(p_split)
        out[str(n)] = {
            "reference_rows": n,
            "repetitions": reps,
            "in_sample": {f"alpha_{a}": float((p_in_a <= a).mean()) for a in (0.01, 0.05)},
            "split": {f"alpha_{a}": float((p_split_a <= a).mean()) for a in (0.01, 0.05)},
            "seconds": time.perf_counter() - t,
        }
        log.info("distortion null, reference %d: %s", n, out[str(n)])
    return out


def distortion_null_markdown(res: dict[str, Any]) -> str:
    lines = [
        "# Distortion test: false alarms on in-distribution data",
        "",
        f"3-D Gaussian mixture (10 components), batch {res['batch_rows']} rows, "
        f"{res['repetitions']} repetitions per size, {res['permutations']} permutations, "
        f"SQ K = 10, r = 3. Rate = share of batches with p <= alpha (should be <= alpha). "
        f"{res['machine'].get('cpu')} x {res['machine'].get('logical_cores')}, commit "
        f"{res['machine'].get('commit')}; {res['seconds']:.0f} s.",
        "",
        "| reference rows | in-sample a=0.01 | in-sample a=0.05 | split a=0.01 | split a=0.05 |",
        "|---|---|---|---|---|",
    ]
    for r in res["sizes"].values():
        lines.append(
            f"| {r['reference_rows']:,} | {r['in_sample']['alpha_0.01']:.3f} | "
            f"{r['in_sample']['alpha_0.05']:.3f} | {r['split']['alpha_0.01']:.3f} | "
            f"{r['split']['alpha_0.05']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main_distortion_null(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    sizes = [int(s) for s in args.sizes.split(",")]
    res = {
        "study": "distortion p-value under the null (in-sample vs split centers)",
        "batch_rows": args.batch_size,
        "repetitions": args.repetitions,
        "permutations": args.permutations,
        "machine": machine(),
        "sizes": distortion_null(
            sizes, args.repetitions, args.batch_size, args.seed, args.permutations
        ),
    }
    res["seconds"] = time.perf_counter() - t0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2))
    md = distortion_null_markdown(res)
    out.with_suffix(".md").write_text(md)
    print(md)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=2000)
    p.add_argument("--n-null", type=int, default=150, help="in-distribution batches (encoder A)")
    p.add_argument("--n-null-b", type=int, default=100, help="in-distribution batches (encoder B)")
    p.add_argument("--n-shift", type=int, default=50, help="batches per shift")
    p.add_argument("--n-sequences", type=int, default=10, help="gradual-drift sequences")
    p.add_argument(
        "--nights", type=int, default=10, help="nights per gradual sequence (share 5%%/night)"
    )
    p.add_argument("--reference-rows", type=int, default=10000)
    p.add_argument("--fraction", type=float, default=0.05, help="labeled share of the encoders")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--encoder-max-seconds", type=float, default=300.0)
    p.add_argument("--heldout-digit", type=int, default=9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default="sqflow-output/drift_eval_cache")
    p.add_argument(
        "--paper-cache",
        default="sqflow-output/paper_cache",
        help="reuse the paper table's encoder of --fraction from here if present ('' = no)",
    )
    p.add_argument("--out", default="bench/results/drift_eval", help="output path without suffix")
    p.add_argument(
        "--distortion-null",
        action="store_true",
        help="only the distortion p-value study on synthetic 3-D mixture data (fast; writes "
        "--out, default bench/results/drift_distortion_null)",
    )
    p.add_argument("--sizes", default="500,1000,2000,5000,10000", help="reference sizes")
    p.add_argument("--repetitions", type=int, default=200, help="distortion null study")
    p.add_argument("--permutations", type=int, default=500, help="distortion null study")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.distortion_null:
        if args.out == "bench/results/drift_eval":
            args.out = "bench/results/drift_distortion_null"
        return main_distortion_null(args)

    import torch

    from sqflow.datasets import load_mnist

    torch.set_num_threads(1)
    t_start = time.perf_counter()
    policy = DriftPolicy()
    x, y = load_mnist("train")
    xt, yt = load_mnist("test")
    timings: dict[str, float] = {}

    # ---------------- encoder A and its setting
    t = time.perf_counter()
    reuse = None
    if args.paper_cache:
        hits = sorted(
            glob.glob(str(Path(args.paper_cache) / f"f{args.fraction:g}_*" / "encoder.pt"))
        )
        reuse = hits[0] if hits else None
    encA, maskA, infoA = get_encoder("all-digits", x, y, args, reuse)
    A = setting("A", encA, maskA, x, y, np.ones(len(x), bool), args)
    clean = encA.embed(xt)
    shifted = {}
    for name, (kind, amount) in SHIFTS.items():
        shifted[name] = encA.embed(apply_shift(xt, kind, amount, args.seed + 11))
        log.info("embedded shift %s", name)
    timings["encoder_A_and_embeddings"] = time.perf_counter() - t

    rng = np.random.default_rng([args.seed, 100])
    B = args.batch_size
    all_test = np.arange(len(xt))
    scenarios: dict[str, dict[str, Any]] = {}
    t = time.perf_counter()
    seed = 1000

    def run(name: str, setting_: dict[str, Any], batches: list[np.ndarray], kind: str) -> None:
        nonlocal seed
        t1 = time.perf_counter()
        rows = run_batches(
            setting_["ref"], setting_["centers"], batches, seed, policy, setting_["fit_rows"]
        )
        seed += len(batches)
        scenarios[name] = {
            "kind": kind,
            "in_spec": name in IN_SPEC or kind == "null",
            **summarize(rows, policy.alpha),
            "seconds": time.perf_counter() - t1,
            # per batch: [value, p-value] of each statistic (for re-deriving
            # other thresholds from the same batches)
            "batches": [{s: [r["values"][s], r["p"][s]] for s in ALL_STATISTICS} for r in rows],
        }
        s = scenarios[name]
        log.info(
            "%s: policy rate %.3f (%s) in %.1f s",
            name,
            s["policy_rate"],
            s["alpha_0.01"],
            s["seconds"],
        )

    run(
        "in-distribution",
        A,
        [clean[sample_batch(all_test, B, rng)] for _ in range(args.n_null)],
        "null",
    )
    for name in SHIFTS:
        run(
            name,
            A,
            [shifted[name][sample_batch(all_test, B, rng)] for _ in range(args.n_shift)],
            "shift",
        )
    low = np.flatnonzero(yt <= 4)
    run(
        "prior-digits-0-4",
        A,
        [clean[sample_batch(low, B, rng)] for _ in range(args.n_shift)],
        "shift",
    )
    no1 = np.flatnonzero(yt != 1)
    run("prior-no-1", A, [clean[sample_batch(no1, B, rng)] for _ in range(args.n_shift)], "shift")
    timings["scenarios_A"] = time.perf_counter() - t

    # ---------------- gradual drift (rotation 30 degrees, share 5 % x night)
    t = time.perf_counter()
    from sqflow.drift import detect_drift

    gradual = []
    rot = shifted["rotate-30"]
    for _ in range(args.n_sequences):
        first: dict[str, int | None] = {"policy": None, **{s: None for s in ALL_STATISTICS}}
        for night in range(args.nights + 1):
            share = 0.05 * night
            idx = sample_batch(all_test, B, rng)
            n_sh = int(round(share * B))
            batch = np.concatenate([rot[idx[:n_sh]], clean[idx[n_sh:]]])
            rep = detect_drift(
                A["ref"],
                batch,
                centers=A["centers"],
                policy=policy,
                seed=seed,
                centers_fit_rows=A["fit_rows"],
            )
            seed += 1
            if rep.drifted and first["policy"] is None:
                first["policy"] = night
            for st in rep.statistics:
                if st.drifted and first[st.name] is None:
                    first[st.name] = night
        gradual.append(first)
    timings["gradual"] = time.perf_counter() - t

    def med(key: str) -> float | None:
        v = [g[key] for g in gradual if g[key] is not None]
        return float(np.median(v)) if v else None

    gradual_summary = {
        "shift": "rotate-30",
        "share_per_night": 0.05,
        "nights": args.nights,
        "sequences": gradual,
        "median_first_night": {k: med(k) for k in ("policy", *ALL_STATISTICS)},
        "never_flagged": {
            k: sum(g[k] is None for g in gradual) for k in ("policy", *ALL_STATISTICS)
        },
    }

    # ---------------- encoder B: unseen class
    t = time.perf_counter()
    h = args.heldout_digit
    keep = y != h
    encB, maskB_k, infoB = get_encoder(f"without-{h}", x[keep], y[keep], args, None)
    Bset = setting("B", encB, maskB_k, x[keep], y[keep], np.ones(int(keep.sum()), bool), args)
    cleanB = encB.embed(xt)
    known = np.flatnonzero(yt != h)
    unseen = np.flatnonzero(yt == h)
    timings["encoder_B_and_embeddings"] = time.perf_counter() - t
    t = time.perf_counter()
    run(
        "in-distribution (encoder B, 9 digits)",
        Bset,
        [cleanB[sample_batch(known, B, rng)] for _ in range(args.n_null_b)],
        "null",
    )
    for share, name in ((0.10, "unseen-10pct"), (0.30, "unseen-30pct")):
        n_u = int(round(share * B))
        batches = [
            cleanB[
                np.concatenate([sample_batch(known, B - n_u, rng), sample_batch(unseen, n_u, rng)])
            ]
            for _ in range(args.n_shift)
        ]
        run(name, Bset, batches, "shift")
    timings["scenarios_B"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start

    result = {
        "protocol": __doc__.split("Protocol\n--------\n", 1)[1].strip(),
        "config": vars(args),
        "policy": policy.model_dump(mode="json"),
        "encoders": {"A": infoA, "B": {**infoB, "heldout_digit": h}},
        "scenarios": scenarios,
        "gradual": gradual_summary,
        "timings_s": timings,
        "machine": machine(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    md = to_markdown(result)
    out.with_suffix(".md").write_text(md)
    print(md)
    return 0


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f}"


def to_markdown(res: dict[str, Any]) -> str:
    pol = res["policy"]
    m = res["machine"]
    lines = [
        "# Drift monitor evaluation (bench/drift_eval.py)",
        "",
        f"Batches of {res['config']['batch_size']} MNIST test images embedded by a triplet "
        f"encoder (5 % labeled recipe); reference = {res['config']['reference_rows']} training "
        "images the encoder did not train on; centers = SQ (K=10, r=3) on the reference. Rates in "
        "percent of batches flagged (in-distribution rows: false alarm rate; shift rows: "
        "detection rate). Default policy: "
        f"alpha={pol['alpha']}, min_agreeing={pol['min_agreeing']} of {len(pol['statistics'])} "
        f"({', '.join(pol['statistics'])}), distortion ratio >= {pol['distortion_min_ratio']}, "
        f"PSI >= {pol['occupancy_min_psi']}, MMD on {pol['mmd_max_rows']}+{pol['mmd_max_rows']} "
        f"rows with {pol['mmd_permutations']} permutations.",
        "",
        "| scenario | batches | **policy** | mmd | ks | distortion | occupancy | 2 of 4 | "
        "policy @ alpha 0.05 (any) | median ratio | median PSI |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in res["scenarios"].items():
        a1, a5 = s["alpha_0.01"], s["alpha_0.05"]
        tag = "" if s["in_spec"] else " (below spec)"
        lines.append(
            f"| {name}{tag} | {s['n_batches']} | **{_pct(s['policy_rate'])}** | {_pct(a1['mmd'])} | "
            f"{_pct(a1['ks'])} | {_pct(a1['distortion'])} | {_pct(a1['occupancy'])} | "
            f"{_pct(a1['2_of_4'])} | {_pct(a5['1_of_4'])} | "
            f"{s['median_values']['distortion']:.3f} | {s['median_values']['occupancy']:.3f} |"
        )
    g = res["gradual"]
    mf, nf = g["median_first_night"], g["never_flagged"]
    lines += [
        "",
        f"Gradual drift: night n has {100 * g['share_per_night']:.0f} % x n images rotated by 30 "
        f"degrees ({len(g['sequences'])} sequences, nights 0..{g['nights']}). Median first night "
        "flagged (never flagged in brackets, out of the sequences):",
        "",
        "| policy | mmd | ks | distortion | occupancy |",
        "|---:|---:|---:|---:|---:|",
        "| "
        + " | ".join(
            f"{mf[k] if mf[k] is not None else '-'} ({nf[k]})" for k in ("policy", *ALL_STATISTICS)
        )
        + " |",
        "",
        f"Encoders: A {res['encoders']['A']}; B (without digit "
        f"{res['encoders']['B']['heldout_digit']}) {res['encoders']['B']}.",
        "",
        f"Machine: {m['cpu']}, {m['logical_cores']} logical cores (shared with other jobs), "
        f"torch 1 thread; commit {m['commit']}; {m['date']}. Wall time "
        f"{res['timings_s']['total']:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in res['timings_s'].items() if k != 'total')}).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
