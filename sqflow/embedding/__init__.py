"""Learned low-dimensional embeddings (PAPER.md section 4): a triplet network trained with online
semi-hard mining on the labeled rows plus a label-free contrastive objective (NT-Xent between
two random views) on every row, so that Stochastic Quantization runs where distances keep their contrast."""

from .encoder import (
    MODES,
    TripletEncoder,
    data_sha256,
    preprocess,
    resolve_device,
    train_encoder,
    training_mode,
)
from .mining import pairwise_distances, semi_hard_triplet_loss, semi_hard_triplets
from .networks import MLPEncoder, PaperCNN, build_network
from .selfsup import nt_xent_loss

__all__ = [
    "TripletEncoder",
    "train_encoder",
    "training_mode",
    "MODES",
    "nt_xent_loss",
    "preprocess",
    "resolve_device",
    "data_sha256",
    "semi_hard_triplets",
    "semi_hard_triplet_loss",
    "pairwise_distances",
    "PaperCNN",
    "MLPEncoder",
    "build_network",
]
