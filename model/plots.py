"""Evaluation plots per task as matplotlib figures, rendered off-screen (Agg).

Classifiers: a confusion matrix with class names, and a ROC curve (binary: the positive class;
multiclass: one-vs-rest per class). Regression: residuals against predictions, and predicted
against actual values with the identity line.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display on servers, CI or in containers

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay


def confusion_matrix_figure(
    y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[object], names: Sequence[str]
) -> Figure:
    """Confusion matrix of held-out labels vs predictions, with class names."""
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ConfusionMatrixDisplay.from_predictions(
        y_true, y_pred, labels=list(classes), display_labels=list(names), ax=ax, colorbar=False
    )
    ax.set_title("Held-out confusion matrix")
    fig.tight_layout()
    return fig


def roc_curve_figure(
    y_true: np.ndarray, proba: np.ndarray, classes: Sequence[object], names: Sequence[str]
) -> Figure:
    """ROC curve(s) on the held-out set with AUC: the positive class, or one-vs-rest per class."""
    fig, ax = plt.subplots(figsize=(4.5, 4))
    shown = [1] if len(classes) == 2 else range(len(classes))
    for index in shown:
        RocCurveDisplay.from_predictions(
            y_true == classes[index], proba[:, index], name=str(names[index]), ax=ax
        )
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    ax.set_title("Held-out ROC curve")
    fig.tight_layout()
    return fig


def residuals_figure(y_true: np.ndarray, y_pred: np.ndarray) -> Figure:
    """Residuals (actual - predicted) against predictions on the held-out set."""
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.scatter(y_pred, y_true - y_pred, s=12, alpha=0.7)
    ax.axhline(0, linestyle="--", color="grey", linewidth=1)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual - predicted")
    ax.set_title("Held-out residuals")
    fig.tight_layout()
    return fig


def predicted_vs_actual_figure(y_true: np.ndarray, y_pred: np.ndarray) -> Figure:
    """Predicted against actual values on the held-out set, with the identity line."""
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.scatter(y_true, y_pred, s=12, alpha=0.7)
    low, high = float(min(y_true.min(), y_pred.min())), float(max(y_true.max(), y_pred.max()))
    ax.plot([low, high], [low, high], linestyle="--", color="grey", linewidth=1)
    ax.set_xlabel("actual")
    ax.set_ylabel("predicted")
    ax.set_title("Held-out predicted vs actual")
    fig.tight_layout()
    return fig


def close(fig: Figure) -> None:
    """Release a figure's memory (pyplot keeps every open figure alive)."""
    plt.close(fig)
