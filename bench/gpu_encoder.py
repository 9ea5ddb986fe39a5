"""Encoder throughput on one device: one training epoch and ``embed`` images/s (issue 3, GPU).

    python -m bench.gpu_encoder --device cuda     # on the lent GPU machine
    python -m bench.gpu_encoder --device cpu      # on this CPU machine, for the comparison

Each run measures, on the built-in MNIST data (60,000 train + 10,000 test images):

* one training epoch of the paper CNN over the 54,000 labeled training rows (10 % of each class
  held out for validation, as in ``train_encoder``), at batch 1000 (the paper) and 256 (the CPU
  run of the paper table); the epoch time includes the validation pass, as in training;
* ``TripletEncoder.embed`` over all 70,000 images at several batch sizes, end to end (uint8 in,
  float32 out on the host: preprocessing and host<->device copies included), best of 3.

A warm-up epoch on 2,000 rows runs first so CUDA/cuDNN initialisation is not counted. Results are
merged into ``bench/results/gpu_encoder.json`` under a key per device, so the CPU and GPU rows
sit side by side and the table prints the GPU/CPU ratio when both are present.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bench._report import RESULTS, machine, print_table


def _device_name(dev) -> str:
    import torch

    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"CPU ({machine()['cpu']}, {torch.get_num_threads()} torch threads)"


def measure(device: str, train_batches: list[int], embed_batches: list[int], repeats: int) -> dict:
    import torch

    from sqflow.datasets import load_mnist
    from sqflow.embedding import train_encoder
    from sqflow.embedding.encoder import resolve_device

    dev = resolve_device(device)
    x_tr, y_tr = load_mnist("train")
    x_te, _ = load_mnist("test")
    x_all = np.concatenate([x_tr, x_te])

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    # warm-up: CUDA context and cuDNN initialisation stay out of the timings
    train_encoder(x_tr[:2000], y_tr[:2000], epochs=1, batch_size=500, device=dev, progress=False)
    sync()

    epochs = []
    enc = None
    for b in train_batches:
        t0 = time.perf_counter()
        enc = train_encoder(
            x_tr, y_tr, epochs=1, batch_size=b, device=dev, progress=False, patience=1
        )
        sync()
        wall = time.perf_counter() - t0
        ep = enc.metadata["metrics"]["epoch_seconds"]
        n_lab = enc.metadata["n_train"]
        epochs.append(
            {
                "batch_size": b,
                "epoch_seconds": float(ep[0]),
                "call_seconds": wall,
                "train_images_per_s": n_lab / float(ep[0]),
            }
        )
        print(
            f"  train epoch, batch {b}: {ep[0]:.2f} s ({n_lab / ep[0]:,.0f} images/s)", flush=True
        )

    embeds = []
    for b in embed_batches:
        best = float("inf")
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            z = enc.embed(x_all, batch_size=b)
            sync()
            best = min(best, time.perf_counter() - t0)
        assert z.shape == (len(x_all), enc.latent_dim) and np.isfinite(z).all()
        embeds.append({"batch_size": b, "seconds": best, "images_per_s": len(x_all) / best})
        print(
            f"  embed 70,000 images, batch {b}: {best:.3f} s ({len(x_all) / best:,.0f} images/s)",
            flush=True,
        )
    return {
        "device": str(dev),
        "device_name": _device_name(dev),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "machine": machine(),
        "train_epoch": epochs,
        "embed": embeds,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default=None, help="cpu, cuda (default: CUDA if present)")
    p.add_argument("--label", default=None, help="key in the JSON (default: 'gpu' or 'cpu')")
    p.add_argument("--train-batches", type=int, nargs="+", default=[1000, 256])
    p.add_argument("--embed-batches", type=int, nargs="+", default=[1024, 4096, 16384])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", default=str(RESULTS / "gpu_encoder.json"))
    args = p.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    res = measure(args.device, args.train_batches, args.embed_batches, args.repeats)
    label = args.label or ("gpu" if res["device"].startswith("cuda") else "cpu")

    out = Path(args.out)
    doc = json.loads(out.read_text()) if out.exists() else {}
    doc[label] = res
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=float))
    tmp.replace(out)

    rows = []
    for lab, r in doc.items():
        for e in r["train_epoch"]:
            rows.append(
                {
                    "device": lab,
                    "what": f"train epoch, batch {e['batch_size']}",
                    "seconds": e["epoch_seconds"],
                    "images/s": e["train_images_per_s"],
                }
            )
        for e in r["embed"]:
            rows.append(
                {
                    "device": lab,
                    "what": f"embed 70k, batch {e['batch_size']}",
                    "seconds": e["seconds"],
                    "images/s": e["images_per_s"],
                }
            )
    if "gpu" in doc and "cpu" in doc:
        cpu = {r["what"]: r["images/s"] for r in rows if r["device"] == "cpu"}
        for r in rows:
            if r["device"] == "gpu" and r["what"] in cpu:
                r["gpu/cpu"] = r["images/s"] / cpu[r["what"]]
    for lab, r in doc.items():
        print(f"{lab}: {r['device_name']}, torch {r['torch']}")
    print_table(rows, ["device", "what", "seconds", "images/s", "gpu/cpu"])
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
