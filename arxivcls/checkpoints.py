"""Where Train runs keep their checkpoints, and what happens to them after a run: pick the best one
Ray kept and export its Hugging Face files. Ray keeps and deletes the checkpoints themselves
(ray.train.CheckpointConfig in arxivcls.train.build_trainer)."""
import os
import shutil
import tempfile
from pathlib import Path

TRAINING_STATE = "training_state.pt"  # optimizer/scheduler/progress; not part of the exported model


def is_local(storage: str) -> bool:
    return "://" not in storage


def storage_uri(path: str) -> str:
    return str(Path(path).expanduser().resolve()) if is_local(path) else path


def resolve_filesystem(path: str):
    """(pyarrow filesystem, path inside it) for a local path or a URI (s3://, gs://, ...)."""
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(Path(path).resolve().as_uri() if is_local(path) else path)


def checkpoint_exists(path) -> bool:
    import pyarrow.fs

    if not isinstance(path, str) or not path:
        return False
    fs, root = resolve_filesystem(path)
    return fs.get_file_info(root).type == pyarrow.fs.FileType.Directory


def best_checkpoint(result, metric: str, mode: str):
    """(Checkpoint, score) of a Train result's best kept checkpoint; among equal scores the later
    one, as Ray's own retention ranks them. (None, None) when it kept none."""
    scored = [(c, m[metric]) for c, m in (result.best_checkpoints or []) if metric in m and checkpoint_exists(c.path)]
    if not scored:
        return None, None
    sign = 1 if mode == "max" else -1
    return max(enumerate(scored), key=lambda item: (sign * item[1][1], item[0]))[1]


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
