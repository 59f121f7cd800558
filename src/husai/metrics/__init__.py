"""Stability and ground-truth metrics for SAEs, every number with its baseline.

Public API (all accept decoder tensors ``[n_latents, d]``, SAE objects or SAE dirs):
matching (``match``, ``linear_assignment``, ``cosine_matrix``), stability (``pw_mcc``,
``mmcs``, ``shared_fraction``, ``activation_mcc``, ``per_latent_stability``,
``stability_pair``, ``stability_set``), subspaces, random baselines (``MetricValue``,
``random_unit_baseline``) and ground truth (``gt_mcc``, plane coverage and purity,
``ground_truth_report``). ``husai.metrics.analyze.analyze_dirs`` backs ``husai analyze``.
"""

from husai.metrics.baselines import MetricValue, metric_value, random_unit, random_unit_baseline
from husai.metrics.ground_truth import (
    activation_frequency_purity,
    frequency_allocation,
    ground_truth_report,
    ground_truth_summary,
    gt_mcc,
    latent_purity,
    load_planes,
    plane_coverage,
    plane_shares,
    truth_directions,
)
from husai.metrics.matching import Matching, cosine_matrix, linear_assignment, match, match_scores
from husai.metrics.similarity import (
    activation_mcc,
    correlation_matrix,
    mmcs,
    pw_mcc,
    shared_fraction,
)
from husai.metrics.stability import per_latent_stability, stability_pair, stability_set
from husai.metrics.subspace import principal_cosines, span_overlap, subspace_overlap

__all__ = [
    "activation_frequency_purity",
    "frequency_allocation",
    "ground_truth_report",
    "ground_truth_summary",
    "gt_mcc",
    "latent_purity",
    "load_planes",
    "plane_coverage",
    "plane_shares",
    "truth_directions",
    "Matching",
    "MetricValue",
    "activation_mcc",
    "correlation_matrix",
    "cosine_matrix",
    "linear_assignment",
    "match",
    "match_scores",
    "metric_value",
    "mmcs",
    "per_latent_stability",
    "principal_cosines",
    "pw_mcc",
    "random_unit",
    "random_unit_baseline",
    "shared_fraction",
    "span_overlap",
    "stability_pair",
    "stability_set",
    "subspace_overlap",
]
