"""A Ray Train run's directory on storage: its checkpoints (published, pruned, exported), the rung
state of synchronous halving, its small run files and Ray's run snapshot.

On a local or NFS disk the loop publishes checkpoints itself, never holding more than `keep`
(docs/design.md, Checkpoints); on an object store (s3://, gs://) Ray uploads and retains them.
"""
import contextlib
import json
import os
import posixpath
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from arxivcls.files import atomic_write_text



def worker_print(message: str) -> None:
    """One console line from a Train worker. Ray Train's patched print() in workers both tees to
    stdout and logs to a handler that prints too: the console would show the line twice."""
    print(message, file=sys.__stdout__, flush=True)


TRAINING_STATE = "training_state.pt"  # optimizer/scheduler/progress; not part of the exported model
FINAL_RESULT = "final_result.json"  # a finished run's result, replayed if Tune restarts its trial
# The metrics a run reported last. A restarted run reads its epoch so as not to report epochs
# again; and Ray's Result.metrics holds the latest *checkpoint's* metrics, not the last epoch's.
LAST_REPORT = "last_report.json"
# A checkpoint being written, and one being replaced: hidden names, never counted as checkpoints.
INCOMING, RETIRED = ".incoming-", ".retired-"
# Where a trial paused at a rung (tune.scheduler: sync) resumes from when that epoch was not its
# best: it holds what a checkpoint holds, but is never reported, exported or counted as one.
RUNG_STATE = ".rung-state"
RUNG_WAIT_TIMEOUT_S = 900.0  # a rung decision that never comes must not hold a worker forever
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train V2's list of a run's reported checkpoints


def is_local(storage: str) -> bool:
    return "://" not in storage


def storage_uri(path: str) -> str:
    return str(Path(path).expanduser().resolve()) if is_local(path) else path


def resolve_filesystem(path: str):
    """(pyarrow filesystem, path inside it) for a local path or a URI (s3://, gs://, ...)."""
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(Path(path).resolve().as_uri() if is_local(path) else path)


def continue_marker(epoch: int) -> str:
    """The run file that lets a trial train past rung `epoch` of synchronous successive halving."""
    return f"continue_after_epoch_{epoch}"


@dataclass(frozen=True)
class RunDir:
    """`storage`/`name`: where one Train run keeps its checkpoints and run files."""

    storage: str
    name: str

    def __post_init__(self):
        object.__setattr__(self, "storage", storage_uri(self.storage))

    @classmethod
    def of_trial(cls, storage: str, trial_id: str) -> "RunDir":
        """A study trial's run: a stable name, so a restarted trial finds its checkpoints."""
        return cls(storage, f"train-{trial_id}")

    @property
    def uri(self) -> str:
        return f"{self.storage.rstrip('/')}/{self.name}"

    @property
    def local(self) -> Path | None:
        """The directory when it is on a local or NFS disk (the loop then publishes checkpoints)."""
        return Path(self.uri) if is_local(self.storage) else None

    # ---------------------------------------------------------------- run files

    def write(self, file_name: str, text: str) -> None:
        """A small file next to the run's checkpoints; atomic on local disks."""
        if self.local:
            atomic_write_text(self.local / file_name, text)
            return
        fs, path = resolve_filesystem(f"{self.uri}/{file_name}")
        with fs.open_output_stream(path) as out:  # object stores publish a whole object at close
            out.write(text.encode("utf-8"))

    def read(self, file_name: str) -> str | None:
        import pyarrow.fs

        fs, path = resolve_filesystem(f"{self.uri}/{file_name}")
        if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
            return None
        with fs.open_input_stream(path) as stream:
            return stream.read().decode("utf-8")

    def last_report(self) -> dict | None:
        text = self.read(LAST_REPORT)
        return json.loads(text) if text else None

    def mark_continue(self, epoch: int) -> None:
        self.write(continue_marker(epoch), "")

    def may_continue(self, epoch: int) -> bool:
        return self.read(continue_marker(epoch)) is not None

    def wait_for_rung(self, epoch: int, poll_s: float = 0.2) -> None:
        """Hold at a rung epoch until the study lets this trial go on (arxivcls.halving). A trial the
        study pauses or stops is killed while it waits, so it never trains an epoch nobody asked for."""
        deadline = time.monotonic() + RUNG_WAIT_TIMEOUT_S
        while not self.may_continue(epoch):
            if time.monotonic() > deadline:
                worker_print(f"no decision at rung epoch {epoch} after {RUNG_WAIT_TIMEOUT_S:.0f}s: going on")
                return
            time.sleep(poll_s)

    # ---------------------------------------------------------------- checkpoints

    @contextlib.contextmanager
    def restore_point(self):
        """The directory of the checkpoint to resume from, or None for a fresh run."""
        import ray.train

        if self.local:
            # a rung state exists only while it is newer than every checkpoint (a publish deletes it)
            yield self.local / RUNG_STATE if (self.local / RUNG_STATE).is_dir() else newest_checkpoint(self.local)
            return
        checkpoint = ray.train.get_checkpoint()  # object stores: Ray's own checkpoint bookkeeping
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as checkpoint_dir:
            yield Path(checkpoint_dir)

    def newest_checkpoint(self) -> Path | None:
        return newest_checkpoint(self.local) if self.local else None

    def publish(self, write, keep: int) -> Path:
        return publish_checkpoint(self.local, write, keep)

    def save_rung_state(self, write) -> None:
        save_rung_state(self.local, write)

    def discard_rung_state(self) -> None:
        if self.local:
            discard_rung_state(self.local)

    def forget_deleted_checkpoints(self) -> None:
        if self.local:
            forget_deleted_checkpoints(self.local)


def last_reported_metrics(storage_path: str, run_name: str) -> dict | None:
    return RunDir(storage_path, run_name).last_report()


# ---------------------------------------------------------------- the publish protocol (local disk)

def visible_checkpoints(run_dir: Path) -> list[Path]:
    """A run's checkpoint directories, oldest first (their names are UTC timestamps)."""
    return sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())


def finish_interrupted_publish(run_dir: Path) -> None:
    """Complete or undo a publish_checkpoint that a crash cut short. A checkpoint is retired
    only after the incoming one is complete, so: a retired one -> the incoming one is whole,
    publish it; no retired one -> the incoming one may be half-written, delete it."""
    retired = sorted(run_dir.glob(f"{RETIRED}*"))
    for incoming in sorted(run_dir.glob(f"{INCOMING}*")):
        if retired:
            incoming.rename(run_dir / incoming.name.removeprefix(INCOMING))
        else:
            shutil.rmtree(incoming)
    for path in retired:
        shutil.rmtree(path)


def newest_checkpoint(run_dir: Path) -> Path | None:
    """Where a restarted run resumes from, whatever moment a crash interrupted (read-only: every
    rank asks). Only improving epochs are checkpointed, so the newest is the best."""
    candidates = visible_checkpoints(run_dir)
    if any(run_dir.glob(f"{RETIRED}*")):  # crashed mid-publish, after the incoming one was complete
        candidates += sorted(run_dir.glob(f"{INCOMING}*"))
    return max(candidates, key=lambda p: p.name.removeprefix(INCOMING), default=None)


def publish_checkpoint(run_dir: Path, write, keep: int) -> Path:
    """Add a checkpoint without ever holding more than `keep` and without a moment with nothing to
    resume from: write the new one under a hidden name, move the oldest aside (hidden), rename the
    new one into place, delete the old. Renames are atomic; newest_checkpoint and
    finish_interrupted_publish handle a crash at any point."""
    run_dir.mkdir(parents=True, exist_ok=True)
    finish_interrupted_publish(run_dir)
    discard_rung_state(run_dir)  # superseded by the new, newer checkpoint
    now = time.time_ns()
    name = f"checkpoint_{time.strftime('%Y-%m-%d_%H-%M-%S', time.gmtime(now // 10**9))}.{now % 10**9:09d}"
    incoming = run_dir / f"{INCOMING}{name}"
    write(incoming)
    kept = visible_checkpoints(run_dir)
    retired = [old.rename(run_dir / f"{RETIRED}{old.name}") for old in kept[:max(0, len(kept) + 1 - keep)]]
    incoming.rename(run_dir / name)
    for path in retired:
        shutil.rmtree(path)
    return run_dir / name


def save_rung_state(run_dir: Path, write) -> None:
    """Keep the state of a rung epoch that is not the run's best (atomically; replaces an older one)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    staging = run_dir / f"{RUNG_STATE}.incoming"
    shutil.rmtree(staging, ignore_errors=True)
    write(staging)
    shutil.rmtree(run_dir / RUNG_STATE, ignore_errors=True)
    staging.rename(run_dir / RUNG_STATE)


def discard_rung_state(run_dir: Path) -> None:
    """Delete a run's rung state, and one a crash left half-written."""
    for state in (RUNG_STATE, f"{RUNG_STATE}.incoming"):
        shutil.rmtree(run_dir / state, ignore_errors=True)


def forget_deleted_checkpoints(run_dir: Path) -> None:
    """Ray Train restarts a run under an existing name only if every checkpoint its snapshot lists
    still exists; publish_checkpoint deletes all but `keep`. Drop the deleted ones from the
    snapshot (atomically; an unknown format is left alone)."""
    path = run_dir / RAY_SNAPSHOT
    if not path.is_file():
        return
    snapshot = json.loads(path.read_text())
    results, indices = snapshot.get("checkpoint_results"), snapshot.get("checkpoint_report_indices")
    if not isinstance(results, list) or not isinstance(indices, list) or len(results) != len(indices):
        return
    kept = [(r, i) for r, i in zip(results, indices) if (run_dir / r.get("checkpoint_dir_name", "")).is_dir()]
    if len(kept) == len(results):
        return
    snapshot["checkpoint_results"] = [r for r, _ in kept]
    snapshot["checkpoint_report_indices"] = [i for _, i in kept]
    names = {r["checkpoint_dir_name"] for r, _ in kept}
    latest = snapshot.get("latest_checkpoint_result")
    if latest is not None and latest.get("checkpoint_dir_name") not in names:
        snapshot["latest_checkpoint_result"] = kept[-1][0] if kept else None
    pending = [(r, v) for r, v in zip(snapshot.get("pending_training_results", []), snapshot.get("pending_validation_specs", []))
               if r.get("checkpoint_dir_name") in names]
    snapshot["pending_training_results"] = [r for r, _ in pending]
    snapshot["pending_validation_specs"] = [v for _, v in pending]
    atomic_write_text(path, json.dumps(snapshot))


# ---------------------------------------------------------------- after a run: rank, prune, export

def checkpoint_exists(path) -> bool:
    import pyarrow.fs

    if not isinstance(path, str) or not path:
        return False
    fs, root = resolve_filesystem(path)
    return fs.get_file_info(root).type == pyarrow.fs.FileType.Directory


def rank_by_score(scored: list[tuple], mode: str) -> list[tuple]:
    """[(item, score), ...] in report order -> best first; among equal scores the later report
    first, as Ray's own checkpoint retention does. One ranking for picking and for pruning."""
    order = sorted(range(len(scored)), key=lambda i: (scored[i][1] if mode == "max" else -scored[i][1], i), reverse=True)
    return [scored[i] for i in order]


def ranked_checkpoints(result, metric: str, mode: str) -> list[tuple]:
    """[(Checkpoint, score), ...] of a Train result that are still on disk, best first."""
    listed = [(c, m[metric]) for c, m in (result.best_checkpoints or []) if metric in m]
    return rank_by_score([(c, score) for c, score in listed if checkpoint_exists(c.path)], mode)


def best_checkpoint(result, metric: str, mode: str):
    ranked = ranked_checkpoints(result, metric, mode)
    return ranked[0] if ranked else (None, None)


def prune_run_dir(filesystem, run_dir: str, keep_names: set[str]) -> None:
    """Delete every checkpoint_* directory of one finished Train run except those named in
    keep_names (after completing a publish that a killed trial left half done)."""
    import pyarrow.fs

    if isinstance(filesystem, pyarrow.fs.LocalFileSystem) and Path(run_dir).is_dir():
        finish_interrupted_publish(Path(run_dir))
        discard_rung_state(Path(run_dir))  # a trial stopped while paused at a rung
    for info in filesystem.get_file_info(pyarrow.fs.FileSelector(run_dir, allow_not_found=True)):
        if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith("checkpoint_") and info.base_name not in keep_names:
            try:
                filesystem.delete_dir(info.path)
            except (OSError, pyarrow.lib.ArrowException):
                pass


def prune_checkpoints(result, keep: int, metric: str, mode: str) -> None:
    """After a finished run, delete every checkpoint directory of the run but the `keep` best
    (with object-store storage Ray also keeps the latest, which its result may not list)."""
    ranked = ranked_checkpoints(result, metric, mode)
    if ranked:
        paths = [posixpath.normpath(c.path) for c, _ in ranked]
        prune_run_dir(ranked[0][0].filesystem, posixpath.dirname(paths[0]), {posixpath.basename(p) for p in paths[:keep]})


def export_model(checkpoint_path: str, output_dir: str) -> str:
    """Copy a checkpoint's Hugging Face files (not the optimizer state) to output_dir, atomically."""
    import pyarrow.fs

    output = Path(output_dir)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.staging-"))
    fs, root = resolve_filesystem(checkpoint_path)
    local = pyarrow.fs.LocalFileSystem()
    for info in fs.get_file_info(pyarrow.fs.FileSelector(root)):
        if info.type == pyarrow.fs.FileType.File and info.base_name != TRAINING_STATE:
            pyarrow.fs.copy_files(info.path, str(staging / info.base_name), source_filesystem=fs, destination_filesystem=local)
    old = output.with_name(f".{output.name}.old")
    if output.exists():
        os.replace(output, old)
    os.replace(staging, output)
    shutil.rmtree(old, ignore_errors=True)
    return str(output)
