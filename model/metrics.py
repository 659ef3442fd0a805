"""Held-out metrics: pure functions over labels and predicted probabilities.

Higher is better for accuracy, f1 and roc_auc; lower is better for log_loss. f1 is for the positive
class 1 (benign), as scikit-learn computes it by default.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm


def compute_metrics(
    y_true: np.ndarray, proba_positive: np.ndarray, threshold: float = 0.5
) -> dict[str, float]:
    """accuracy, f1, roc_auc and log_loss of positive-class probabilities on a held-out set."""
    y_pred = (proba_positive >= threshold).astype("int64")
    return {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "f1": float(skm.f1_score(y_true, y_pred)),
        "roc_auc": float(skm.roc_auc_score(y_true, proba_positive)),
        "log_loss": float(skm.log_loss(y_true, proba_positive, labels=[0, 1])),
    }
