"""What the known labels say about one cluster: its majority label and its purity.

The one definition, shared by the cluster stage (``cluster_centers`` BI table, run record) and
meant for the cluster report (:mod:`sqflow.report.compute` computes the same figure inline
today). Unlabeled items (label < 0) are ignored.
"""

from __future__ import annotations

import numpy as np

__all__ = ["majority_and_purity"]


def majority_and_purity(labels: np.ndarray) -> tuple[int | None, float | None]:
    """(majority label, purity) of the labels ``(n,)`` of one cluster's items: the most
    frequent label >= 0 (ties: the smallest) and the share of labeled items carrying it, in
    [0, 1]. ``(None, None)`` when no item is labeled."""
    lab = np.asarray(labels)
    lab = lab[lab >= 0]
    if not lab.size:
        return None, None
    vals, counts = np.unique(lab, return_counts=True)
    return int(vals[np.argmax(counts)]), float(counts.max() / lab.size)
