"""The numpy kernels of fitted scikit-learn steps (model.kernels) against the steps themselves:
the same answers on the same arrays, the same error on a non-finite input, scikit-learn's own path
for what a kernel does not take (another dtype, a subclass)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.linear_model import ElasticNet, Lasso, LinearRegression, LogisticRegression, Ridge
from sklearn.preprocessing import StandardScaler

from model.kernels import NON_FINITE_MESSAGE, LinearKernel, ScalerKernel, kernel_for

RNG = np.random.default_rng(11)
X = RNG.normal(size=(300, 6)) * [1, 10, 100, 0.1, 5, 1] + [0, 5, -50, 1, 0, 3]
PROBE = RNG.normal(size=(57, 6)) * 20


def _same(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape and got.dtype == expected.dtype
    if got.dtype.kind == "f":
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    else:
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    "scaler", [StandardScaler(), StandardScaler(with_mean=False), StandardScaler(with_std=False)]
)
def test_the_scaler_kernel_transforms_as_the_scaler_without_touching_its_input(scaler: Any) -> None:
    fitted = scaler.fit(X)
    kernel = kernel_for(fitted)
    assert isinstance(kernel, ScalerKernel)
    probe = PROBE.copy()
    _same(kernel.transform(probe), fitted.transform(PROBE))
    np.testing.assert_array_equal(probe, PROBE)  # a new array, the request's own left as it was


def _targets() -> dict[str, np.ndarray]:
    score = X @ [0.5, -0.02, 0.01, 3, 0.2, -1]
    return {
        "binary": (score > np.median(score)).astype(int),
        "labels": np.where(score > np.median(score), "yes", "no"),
        "multiclass": np.digitize(score, np.quantile(score, [0.33, 0.66])),
        "number": score + RNG.normal(size=len(score)),
    }


@pytest.mark.parametrize(
    ("estimator", "target"),
    [
        (LogisticRegression(max_iter=2000), "binary"),
        (LogisticRegression(max_iter=2000), "labels"),
        (LogisticRegression(max_iter=2000), "multiclass"),
        (LinearRegression(), "number"),
        (Ridge(alpha=3.0), "number"),
        (Lasso(alpha=0.05), "number"),
        (ElasticNet(alpha=0.05), "number"),
        (LinearRegression(fit_intercept=False), "number"),
    ],
)
def test_the_linear_kernel_answers_as_the_model(estimator: Any, target: str) -> None:
    fitted = estimator.fit(X, _targets()[target])
    kernel = kernel_for(fitted)
    assert isinstance(kernel, LinearKernel)
    _same(kernel.predict(PROBE), fitted.predict(PROBE))
    if hasattr(fitted, "predict_proba"):
        _same(kernel.predict_proba(PROBE), fitted.predict_proba(PROBE))


def test_a_regressor_fitted_on_a_column_keeps_its_column() -> None:
    fitted = LinearRegression().fit(X, _targets()["number"].reshape(-1, 1))
    _same(LinearKernel(fitted).predict(PROBE), fitted.predict(PROBE))  # (rows, 1), as sklearn's


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_a_non_finite_input_is_refused_or_passed_on_as_scikit_learn_does(bad: float) -> None:
    scaler = StandardScaler().fit(X)
    model = LogisticRegression(max_iter=2000).fit(X, _targets()["binary"])
    probe = PROBE.copy()
    probe[3, 2] = bad
    for step, call in ((scaler, "transform"), (model, "predict"), (model, "predict_proba")):
        kernel, theirs, ours = kernel_for(step), None, None
        try:
            expected = getattr(step, call)(probe)
        except ValueError as exc:
            theirs = str(exc)
        try:
            got = getattr(kernel, call)(probe)
        except ValueError as exc:
            ours = str(exc)
        assert (ours is None) == (theirs is None), (call, bad, ours, theirs)
        if theirs is None:  # the scaler passes NaN on
            _same(got, expected)
        else:
            assert str(ours).splitlines()[0] == theirs.splitlines()[0]  # sklearn adds advice on NaN
            assert (NON_FINITE_MESSAGE in theirs) == np.isinf(bad)


def test_other_dtypes_go_to_the_fitted_step() -> None:
    scaler = StandardScaler().fit(X.astype(np.float32))
    probe = PROBE.astype(np.float32)
    _same(ScalerKernel(scaler).transform(probe), scaler.transform(probe))  # float32 stays float32


def test_only_the_exact_classes_get_a_kernel() -> None:
    class Tweaked(LogisticRegression):
        def predict(self, x: Any) -> Any:
            return super().predict(x)[::-1]

    assert kernel_for(Tweaked(max_iter=2000).fit(X, _targets()["binary"])) is None
    from sklearn.ensemble import RandomForestClassifier

    assert kernel_for(RandomForestClassifier(n_estimators=3).fit(X, _targets()["binary"])) is None
