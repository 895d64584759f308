"""Training Gaussian encoders (and their dot / cosine twins).

Submodules: :mod:`~kl_retrievers.training.data` (BEIR / JSONL data, negative mining),
:mod:`~kl_retrievers.training.losses` (scores and losses), :mod:`~kl_retrievers.training.teacher`
(int8 cross-encoder teacher), :mod:`~kl_retrievers.training.features` (cached-features fast
path), :mod:`~kl_retrievers.training.trainer` (loops) and :mod:`~kl_retrievers.training.cli`.

Examples:
    >>> from kl_retrievers.training import TrainConfig
    >>> TrainConfig(steps=10).similarity
    'neg_kl'
"""

from __future__ import annotations

from kl_retrievers.training.data import (
    TrainExample,
    TrainingSet,
    from_beir,
    load_training_data,
    mine_bm25_negatives,
    mine_negatives_from_scores,
    read_jsonl,
)
from kl_retrievers.training.features import Features, compute_features, heads_forward
from kl_retrievers.training.losses import (
    contrastive_loss,
    lambdarank_loss,
    listwise_kl_loss,
    margin_mse_loss,
    score_candidates,
    score_matrix,
)
from kl_retrievers.training.trainer import (
    TrainConfig,
    TrainingDivergedError,
    TrainResult,
    apply_freezing,
    encode_from_features,
    merge_lora,
    train_encoder,
    train_heads_cached,
)

__all__ = [
    "Features",
    "TrainConfig",
    "TrainExample",
    "TrainResult",
    "TrainingDivergedError",
    "TrainingSet",
    "apply_freezing",
    "compute_features",
    "contrastive_loss",
    "encode_from_features",
    "from_beir",
    "heads_forward",
    "lambdarank_loss",
    "listwise_kl_loss",
    "load_training_data",
    "margin_mse_loss",
    "merge_lora",
    "mine_bm25_negatives",
    "mine_negatives_from_scores",
    "read_jsonl",
    "score_candidates",
    "score_matrix",
    "train_encoder",
    "train_heads_cached",
]
