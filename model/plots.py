"""Evaluation plots (confusion matrix, ROC curve) as matplotlib figures, rendered off-screen (Agg)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display on servers, CI or in containers

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

CLASS_NAMES = ("malignant", "benign")


def confusion_matrix_figure(y_true: np.ndarray, y_pred: np.ndarray) -> Figure:
    """Confusion matrix of held-out labels vs predictions, with class names."""
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ConfusionMatrixDisplay.from_predictions(
        y_true, y_pred, labels=[0, 1], display_labels=list(CLASS_NAMES), ax=ax, colorbar=False
    )
    ax.set_title("Held-out confusion matrix")
    fig.tight_layout()
    return fig


def roc_curve_figure(y_true: np.ndarray, proba_positive: np.ndarray) -> Figure:
    """ROC curve of the positive class (benign) on the held-out set, with its AUC."""
    fig, ax = plt.subplots(figsize=(4.5, 4))
    RocCurveDisplay.from_predictions(y_true, proba_positive, pos_label=1, name="held-out", ax=ax)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    ax.set_title("Held-out ROC curve")
    fig.tight_layout()
    return fig


def close(fig: Figure) -> None:
    """Release a figure's memory (pyplot keeps every open figure alive)."""
    plt.close(fig)
