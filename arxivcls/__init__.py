"""arxivcls: tune transformer classifiers for arXiv primary categories with Ray Train + Ray Tune.

`arxivcls.plan(config)` and `arxivcls.tune(config)` run a study from Python (arxivcls.api);
`from arxivcls import Classifier` uses a saved model (arxivcls.classifier). The package import
itself stays light (no torch, no Ray) until then.
"""
# arxivcls.api loads the planning module arxivcls/plan.py, which binds `arxivcls.plan` to that
# module once; the import below then binds it to the function for good (the module stays
# importable as `from arxivcls.plan import ...`).
from arxivcls.api import Plan, StudyResult, plan, tune
from arxivcls.errors import UserError

__version__ = "0.1.0"
__all__ = ["Classifier", "Prediction", "Plan", "StudyResult", "UserError", "plan", "tune"]


def __getattr__(name):
    if name in {"Classifier", "Prediction"}:
        from arxivcls import classifier

        return getattr(classifier, name)
    raise AttributeError(f"module 'arxivcls' has no attribute '{name}'")
