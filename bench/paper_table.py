"""Reproduce the paper's semi-supervised MNIST table: see ``sqflow.paper`` for the protocol.

    python bench/paper_table.py --fractions 0.25 0.5 0.75 1.0 --epochs 50 \
        --out bench/results/paper_table.json
    python bench/paper_table.py --train-limit 5000 --epochs 3 --fractions 0.25  # quick check
"""

from __future__ import annotations

import sys

from sqflow.paper import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
