"""The churn example's estimator factory (``examples.churn.factory:gradient_boosting``): a spec's
``estimator`` may name a function that returns any estimator or Pipeline with the scikit-learn API."""

from __future__ import annotations

from sklearn.ensemble import GradientBoostingClassifier


def gradient_boosting(
    n_estimators: int = 60, max_depth: int = 2, seed: int = 0
) -> GradientBoostingClassifier:
    """Shallow boosted trees: small and quick to train, enough for the example's interactions."""
    return GradientBoostingClassifier(n_estimators=n_estimators, max_depth=max_depth, random_state=seed)
