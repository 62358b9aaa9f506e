"""Analysis: per-image properties, drift between datasets, the gap score."""

from shiftkit.analysis.drift import (
    domain_classifier_accuracy,
    feature_gap,
    gap_score,
    histogram_overlap,
    ks_2samp,
    mmd_rbf,
    property_drift,
)
from shiftkit.analysis.properties import PROPERTIES, PropertyTable, compute_properties, image_properties

__all__ = [
    "PROPERTIES", "PropertyTable", "compute_properties", "image_properties", "domain_classifier_accuracy",
    "feature_gap", "gap_score", "histogram_overlap", "ks_2samp", "mmd_rbf", "property_drift",
]
