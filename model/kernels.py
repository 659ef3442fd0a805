"""Numpy forms of fitted scikit-learn steps whose inference is a few array operations.

A fitted ``StandardScaler`` transforms by ``(X - mean_) / scale_``; a fitted linear model answers
``X @ coef_.T + intercept_`` (then a threshold, an argmax or a logistic function). Called through
scikit-learn, each step first validates its input (array conversion, dataframe detection, feature
counts, finiteness): for one row of 30 features that is ~0.25 ms per call, against a few microseconds
of arithmetic. ``kernel_for`` gives the same arithmetic on the fitted attributes, in the order
scikit-learn does it, for the exact classes it knows (``kernel_classes``; a subclass may compute otherwise),
and ``None`` for anything else, which then runs as scikit-learn runs it.

What a kernel still checks is what the served arrays can get wrong: a non-float64 input goes to the
scikit-learn object (whose dtype rules a kernel does not copy), and a non-finite input (a value the
previous step's arithmetic overflowed) raises the ValueError scikit-learn's input check raises, for
an infinity with the same words (``NON_FINITE_MESSAGE``; for NaN the first line of its message).
``model.predictor`` uses kernels only after the whole pipeline made of them answered as the pipeline
itself on probe rows.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

# What scikit-learn's input check says of an inf or a value beyond its dtype (sklearn.utils.validation).
NON_FINITE_MESSAGE = "infinity or a value too large"


def _finite(x: np.ndarray, allow_nan: bool = False) -> np.ndarray:
    """``x``, or the ValueError scikit-learn's ``check_array`` raises for it (NaN allowed or not, as
    the step's own check: a scaler passes NaN through, an estimator refuses it)."""
    if np.isfinite(x).all():
        return x
    if np.isinf(x).any():
        raise ValueError(f"Input X contains {NON_FINITE_MESSAGE} for dtype('float64').")
    if not allow_nan:
        raise ValueError("Input X contains NaN.")
    return x


@dataclass(frozen=True)
class ScalerKernel:
    """A fitted ``sklearn.preprocessing.StandardScaler``'s transform on a dense float64 array."""

    fitted: Any

    def transform(self, x: np.ndarray) -> np.ndarray:
        if x.dtype != np.float64:
            return np.asarray(self.fitted.transform(x))
        _finite(x, allow_nan=True)
        out = x - self.fitted.mean_ if self.fitted.with_mean else x.copy()  # never the caller's array
        if self.fitted.with_std:
            out /= self.fitted.scale_
        return out


@dataclass(frozen=True)
class LinearKernel:
    """A fitted linear model's answers: ``decision_function`` as scikit-learn's linear models compute
    it, ``predict`` (the number, or the class by threshold or argmax) and, for logistic regression,
    ``predict_proba``."""

    fitted: Any

    def _decision(self, x: np.ndarray) -> np.ndarray:
        coef = self.fitted.coef_
        scores = x @ (coef.T if coef.ndim == 2 else coef) + self.fitted.intercept_
        # A classifier's one-column scores are one score per row (LinearClassifierMixin); a
        # regressor's stay as they are (LinearModel).
        classifier = hasattr(self.fitted, "classes_")
        return scores.reshape(-1) if classifier and scores.ndim > 1 and scores.shape[1] == 1 else scores

    def predict(self, x: np.ndarray) -> np.ndarray:
        if x.dtype != np.float64:
            return np.asarray(self.fitted.predict(x))
        scores = self._decision(_finite(x))
        if not hasattr(self.fitted, "classes_"):
            return scores
        index = (scores > 0).astype(np.intp) if scores.ndim == 1 else scores.argmax(axis=1)
        return np.asarray(self.fitted.classes_.take(index, axis=0))

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        if x.dtype != np.float64:
            return np.asarray(self.fitted.predict_proba(x))
        from scipy.special import expit
        from sklearn.utils.extmath import softmax

        scores = self._decision(_finite(x))
        if self.fitted.classes_.size <= 2:
            positive = expit(scores)
            return np.stack([1 - positive, positive], axis=1)
        return np.asarray(softmax(scores, copy=False))


@functools.cache
def kernel_classes() -> dict[type, type]:
    """The fitted scikit-learn classes with a kernel, and their kernel."""
    from sklearn.linear_model import ElasticNet, Lasso, LinearRegression, LogisticRegression, Ridge
    from sklearn.preprocessing import StandardScaler

    linear = (LogisticRegression, LinearRegression, Ridge, Lasso, ElasticNet)
    return {StandardScaler: ScalerKernel, **dict.fromkeys(linear, LinearKernel)}


def kernel_for(fitted: Any) -> ScalerKernel | LinearKernel | None:
    """The kernel of a fitted step of exactly a class in ``kernel_classes``, on dense attributes;
    else None."""
    kernel = kernel_classes().get(type(fitted))
    if kernel is None:
        return None
    if kernel is LinearKernel and not isinstance(getattr(fitted, "coef_", None), np.ndarray):
        return None  # a sparse coef_ (Lasso's sparse_coef_ path) is left to scikit-learn
    return kernel(fitted)
