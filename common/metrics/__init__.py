"""Evaluation metrics shared by clients, server and simulations."""

from common.metrics.ranking import (
    DEFAULT_METRICS,
    MetricSums,
    full_ranks,
    get_metric,
    hit_rate,
    mrr,
    ndcg,
    sample_negatives,
    sampled_ranks,
)

__all__ = [
    "DEFAULT_METRICS",
    "MetricSums",
    "full_ranks",
    "get_metric",
    "hit_rate",
    "mrr",
    "ndcg",
    "sample_negatives",
    "sampled_ranks",
]
