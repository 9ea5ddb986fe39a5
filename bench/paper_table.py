"""Reproduce the paper's semi-supervised MNIST table: see ``sqflow.paper`` for the protocol.

    python bench/paper_table.py --fractions 0.25 0.5 0.75 1.0 --epochs 50 \
        --out bench/results/paper_table.json
    python bench/paper_table.py --train-limit 5000 --epochs 3 --fractions 0.25  # quick check

Label-free and semi-supervised rows (issue 13): fraction 0 = label-free, --label-counts gives
exact label numbers (100 = 10 per class); the full table on a GPU:

    python bench/paper_table.py --fractions 0 0.01 0.05 0.25 1.0 --label-counts 100 \
        --augment --batch-size 256 --epochs 100 --lr-plateau 0.3 --patience 8 \
        --encoder-max-seconds 100 --device cuda --out bench/results/paper_table_ssl_gpu.json

The reduced CPU run of bench/results/paper_table_ssl_cpu.json:

    python bench/paper_table.py --train-limit 10000 --fractions 0 --label-counts 100 \
        --epochs 100 --batch-size 256 --lr 2e-3 --lr-plateau 0.3 --patience 8 \
        --encoder-max-seconds 720 --threads 2 --out bench/results/paper_table_ssl_cpu.json
"""

from __future__ import annotations

import sys

from sqflow.paper import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
