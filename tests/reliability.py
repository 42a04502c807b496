"""Collects what the reliability tests tried and saw. A plain pytest run writes nothing; with
ARXIVCLS_RELIABILITY_TABLE=PATH, conftest writes the table there (results/reliability.md is committed)."""
import os
import re
from pathlib import Path

from arxivcls.files import atomic_write_text

HEADER = "| kind | case | what happened | nothing lost |\n|---|---|---|---|\n"
records: dict[tuple[str, str], tuple[str, str]] = {}


def record(kind: str, case: str, happened: str, nothing_lost: str = "yes") -> None:
    happened = re.sub(r"/tmp/pytest-of-[^\s:`']*", "<tmp>", happened)  # stable across runs
    records[(kind, case)] = (happened.replace("|", "\\|").replace("\n", " "), nothing_lost)


def write_table() -> None:
    """Merge this run's rows into the table at $ARXIVCLS_RELIABILITY_TABLE (rows of tests not run
    this time are kept)."""
    if not records or not os.environ.get("ARXIVCLS_RELIABILITY_TABLE"):
        return
    table = Path(os.environ["ARXIVCLS_RELIABILITY_TABLE"])
    rows = {}
    if table.is_file():
        for line in table.read_text().splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) == 4 and cells[0] not in {"kind", "---"}:
                rows[(cells[0], cells[1])] = (cells[2], cells[3])
    rows.update(records)
    body = "".join(f"| {k} | {c} | {h} | {n} |\n" for (k, c), (h, n) in sorted(rows.items()))
    atomic_write_text(table, "# Reliability: faults and bad inputs tried\n\n"
                             "Written by `ARXIVCLS_RELIABILITY_TABLE=results/reliability.md python -m pytest` from "
                             "`tests/test_bad_inputs.py`, `tests/test_faults.py`, `tests/test_security.py` and "
                             "`tests/test_serve.py` and `tests/test_two_node_cluster.py`; each row is a test that passed.\n\n" + HEADER + body)
