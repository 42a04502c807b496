"""arxivcls: tune transformer classifiers for arXiv primary categories with Ray Train + Ray Tune.

`from arxivcls import Classifier` uses a saved model (arxivcls.classifier); the package import
itself stays light (no torch, no Ray) until then.
"""

__version__ = "0.1.0"
__all__ = ["Classifier", "Prediction"]


def __getattr__(name):
    if name in __all__:
        from arxivcls import classifier

        return getattr(classifier, name)
    raise AttributeError(f"module 'arxivcls' has no attribute '{name}'")
