"""Results are written atomically: a crash (even SIGKILL) while writing keeps the previous results."""
import signal
import subprocess
import sys
import textwrap

import pytest

import reliability
from arxivcls.files import atomic_directory, atomic_write_text


def make_previous(path):
    path.mkdir(parents=True)
    (path / "report.md").write_text("previous report")
    (path / "comparison.csv").write_text("model,accuracy\ntuned,0.5\n")


def test_exception_while_writing_keeps_previous_results(tmp_path):
    results = tmp_path / "results" / "study"
    make_previous(results)
    with pytest.raises(RuntimeError):
        with atomic_directory(results) as staging:
            (staging / "report.md").write_text("half of a new rep")
            raise RuntimeError("crash mid-write")
    assert (results / "report.md").read_text() == "previous report"
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["study"]  # staging removed


def test_process_killed_while_writing_keeps_previous_results(tmp_path):
    results = tmp_path / "results" / "study"
    make_previous(results)
    script = textwrap.dedent(f"""
        import os, signal
        from arxivcls.files import atomic_directory
        with atomic_directory({str(results)!r}) as staging:
            (staging / "report.md").write_text("half of a new rep")
            os.kill(os.getpid(), signal.SIGKILL)  # killed in the middle of writing results
    """)
    process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert process.returncode == -signal.SIGKILL
    assert (results / "report.md").read_text() == "previous report"
    assert (results / "comparison.csv").read_text().startswith("model,accuracy")
    reliability.record("fault", "process SIGKILLed while writing results/<study>/",
                       "previous results/<study>/ intact (new results are staged in a hidden sibling dir, then renamed)")


def test_atomic_file_write_replaces_whole_file(tmp_path):
    target = tmp_path / "a" / "table.md"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two" and [p.name for p in target.parent.iterdir()] == ["table.md"]


def test_successful_write_replaces_previous(tmp_path):
    results = tmp_path / "study"
    make_previous(results)
    with atomic_directory(results) as staging:
        (staging / "report.md").write_text("new report")
    assert (results / "report.md").read_text() == "new report" and not (results / "comparison.csv").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["study"]
