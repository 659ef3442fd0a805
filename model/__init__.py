"""The ML half: data validation, training with MLflow tracking, the BentoML service and bento build.

Nothing in this package imports Pulumi; every module runs on its own (``python -m model.train``).
"""
