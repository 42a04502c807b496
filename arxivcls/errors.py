class UserError(Exception):
    """Bad input or configuration: the CLI prints `error: <message>` and exits 2."""
