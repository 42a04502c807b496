"""arxivcls: tune transformer classifiers for arXiv primary categories with Ray Train + Ray Tune."""

__version__ = "0.1.0"
