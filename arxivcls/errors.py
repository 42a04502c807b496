class UserError(ValueError):
    """Bad input or configuration: the CLI prints `error: <message>` and exits 2; the Python API
    (arxivcls.tune, arxivcls.plan, Classifier) raises it with that message."""
