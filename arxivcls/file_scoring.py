"""Score every paper of a labelled file with several models, in one streaming pass over the file.

A Ray Data read task reads the file in chunks (the readers and string types of data.read_table)
and normalises each chunk; an actor pool, every actor holding every model once, scores windows
of papers in length-sorted batches. Only row numbers, ids, labels and probabilities come back to
the driver, never the texts.
"""
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from arxivcls.errors import UserError

CHUNK_ROWS = 4096  # rows per read chunk: a few MB of text
WINDOW_BATCHES = 16  # an actor scores this many batches per call, sorted by length within the window
# Ray Data hands an actor whole blocks: the read task yields one block per window, so that a small
# file still gives every actor work.


# ---------------------------------------------------------------- the file

@dataclasses.dataclass(frozen=True)
class PapersFile:
    """A labelled papers file: its format, its schema (data.SCHEMAS) and the columns scoring reads."""
    path: str
    format: str
    schema: str
    columns: tuple[str, ...]
    limit: int | None = None  # score only the first `limit` rows


def open_papers_file(path: str, limit: int | None = None) -> PapersFile:
    """Check the file and find its schema from its first rows, before any Ray work starts."""
    from arxivcls.data import SCHEMAS, detect_schema, table_format

    fmt = table_format(path)
    first = next(read_chunks(path, fmt, None, rows=100), None)
    if first is None or first.empty:
        raise UserError(f"{path} holds no papers")
    schema = detect_schema(first.columns)
    _, abstract, category = SCHEMAS[schema]
    columns = ["id", "title", abstract, category] + (["categories"] if "categories" in first.columns else [])
    return PapersFile(str(path), fmt, schema, tuple(dict.fromkeys(columns)), limit)


def count_labelled(papers: PapersFile) -> tuple[int, int]:
    """(rows, rows with a primary category), reading the category column only: a file without
    labels is refused before any model loads."""
    from arxivcls.data import SCHEMAS

    category = SCHEMAS[papers.schema][2]
    rows = labelled = 0
    for chunk in read_chunks(papers.path, papers.format, [category], rows=65536):
        values = chunk[category].iloc[:None if papers.limit is None else papers.limit - rows]
        rows += len(values)
        labelled += int((values.fillna("").astype(str).str.strip() != "").sum())
        if papers.limit is not None and rows >= papers.limit:
            break
    return rows, labelled


def read_chunks(path: str, fmt: str, columns: list[str] | None, rows: int = CHUNK_ROWS):
    """The file as pandas frames of `rows` rows, every text column as str (as data.read_table reads it)."""
    try:
        yield from _raw_chunks(path, fmt, columns, rows)
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not valid UTF-8 text (byte {e.start}): re-encode it as UTF-8")
    except (ValueError, OSError, pd.errors.ParserError) as e:
        raise UserError(f"cannot read {path} as {fmt}: {_first_line(e)}")
    except Exception as e:  # pyarrow raises its own error types for corrupt files
        raise UserError(f"cannot read {path}: {type(e).__name__}: {_first_line(e)}")


def _raw_chunks(path: str, fmt: str, columns: list[str] | None, rows: int):
    if fmt == "parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=rows, columns=columns):
            yield batch.to_pandas()
    elif fmt == "csv":
        with pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8", usecols=columns, chunksize=rows) as reader:
            yield from reader
    else:
        with pd.read_json(path, lines=True, dtype=False, chunksize=rows) as reader:
            for chunk in reader:
                yield chunk if columns is None else chunk.reindex(columns=columns)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def normalized_chunks(papers: PapersFile, rows: int):
    """What the read task yields: normalised chunks of `rows` rows with each row's number in the file."""
    from arxivcls.data import normalize_rows

    start = 0
    for raw in read_chunks(papers.path, papers.format, list(papers.columns), rows):
        if papers.limit is not None:
            raw = raw.iloc[:papers.limit - start]
        chunk = normalize_rows(raw, papers.schema)
        chunk.insert(0, "row", np.arange(start, start + len(chunk), dtype=np.int64))
        start += len(chunk)
        yield chunk
        if papers.limit is not None and start >= papers.limit:
            return


class LabelledPapers(Datasource):
    """A Ray Data datasource with one read task that streams the file chunk by chunk."""

    def __init__(self, papers: PapersFile, chunk_rows: int):
        super().__init__()
        self.papers, self.chunk_rows = papers, chunk_rows

    def estimate_inmemory_data_size(self):
        return None

    def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
        papers, rows = self.papers, self.chunk_rows
        metadata = BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=[papers.path])
        return [ReadTask(lambda: normalized_chunks(papers, rows), metadata)]


# ---------------------------------------------------------------- the models

@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One model to score: what it is, its labels (probability columns) and how it infers."""
    name: str
    path: str
    kind: str  # transformer | baseline | ensemble
    labels: tuple[str, ...]
    max_length: int | None = None  # transformers: where the tokenizer truncates
    precision: str = "auto"
    fitted: object = None  # instead of a path: the object-store reference of a baseline fitted by the driver


def model_spec(name: str, path: str) -> ModelSpec:
    """A saved model's kind, labels and inference settings, read without loading its weights
    (`name` "": the model of a command that takes one, `--model DIR`)."""
    from arxivcls.baseline import load_baseline
    from arxivcls.ensemble import ENSEMBLE_FILE

    directory = Path(path)
    if not directory.is_dir():
        raise UserError(f"{model_flag(name, path)}: no such directory")
    if (directory / ENSEMBLE_FILE).is_file():
        ensemble = json.loads((directory / ENSEMBLE_FILE).read_text())
        labels, _ = transformer_settings(name, directory / ensemble["transformer"])
        if list(labels) != load_baseline(directory / ensemble["baseline"])[1]:
            raise UserError(f"{model_flag(name, path)}: the transformer and the baseline were trained on different categories")
        return ModelSpec(name, path, "ensemble", labels, ensemble["max_length"], ensemble["precision"])
    if (directory / "vectorizer.json").is_file():
        return ModelSpec(name, path, "baseline", tuple(load_baseline(directory)[1]))
    labels, max_length = transformer_settings(name, directory)
    return ModelSpec(name, path, "transformer", labels, max_length)


def model_flag(name: str, path) -> str:
    return f"--model {name}={path}" if name else f"--model {path}"


def transformer_settings(name: str, directory: Path) -> tuple[tuple[str, ...], int]:
    """A saved transformer's labels (by id) and the max_length it was trained at."""
    from arxivcls.ensemble import inference_max_length, read_model_config

    config, id2label = read_model_config(directory)
    weights = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
    if not any((directory / f).is_file() for f in weights):
        raise UserError(f"{model_flag(name, directory)}: no model weights ({', '.join(weights)})")
    return tuple(id2label[i] for i in sorted(id2label)), inference_max_length(directory, config)


class FileScorer:
    """A Ray Data actor holding every model: scores a window of papers with each in turn.

    A transformer is loaded and run once per window even when several models use it (the tuned
    model and an ensemble built on it). Rows without text or category pass through unscored
    (zero probabilities), to be counted."""

    def __init__(self, specs: list[ModelSpec], batch_size: int, num_threads: int):
        self.batch_size, self.num_threads = batch_size, num_threads
        self.transformers, self.window_probs = {}, {}
        self.scorers = [self.load(spec) for spec in specs]
        self.widths = [len(spec.labels) for spec in specs]
        self.readers = [reader(spec) for spec in specs]

    def load(self, spec: ModelSpec):
        """texts -> (n, len(spec.labels)) probabilities."""
        from arxivcls.ensemble import load_model

        if spec.fitted is not None:
            import ray

            return ray.get(spec.fitted).predict_proba
        return load_model(spec.path, spec.max_length, spec.precision, transformer=self.transformer)[0]

    def transformer(self, directory: Path, max_length: int, precision: str):
        """load_transformer's triple, its probabilities computed once per window, by the first model that asks."""
        from arxivcls.ensemble import load_transformer

        key = (str(Path(directory).resolve()), max_length, precision)
        if key not in self.transformers:
            self.transformers[key] = load_transformer(directory, max_length, precision, self.num_threads, self.batch_size)
        predict, id2label, settings = self.transformers[key]

        def probs(texts: list[str]) -> np.ndarray:
            if key not in self.window_probs:
                self.window_probs[key] = predict(texts)
            return self.window_probs[key]
        return probs, id2label, settings

    def __call__(self, batch: dict) -> dict:
        self.window_probs = {}
        scorable = (batch["text"] != "") & (batch["category"] != "")
        texts = batch["text"][scorable].tolist()
        out = {key: batch[key] for key in ("row", "id", "category", "categories")}
        out["has_text"] = batch["text"] != ""
        for i, (score, width) in enumerate(zip(self.scorers, self.widths)):
            started = time.perf_counter()
            probs = np.zeros((len(scorable), width), dtype=np.float32)
            if texts:
                probs[scorable] = score(texts)
            out[f"probs_{i}"] = probs
            out[f"seconds_{i}"] = np.full(len(scorable), (time.perf_counter() - started) / len(scorable))
        for i, read in enumerate(self.readers):
            per_paper = read(texts) if texts and read else {}
            for key in ("tokens", "chars", "cut") if read else ():
                out[f"read_{key}_{i}"] = np.zeros(len(scorable))
                if texts:
                    out[f"read_{key}_{i}"][scorable] = per_paper[key]
        return out


def reader(spec: ModelSpec):
    """texts -> what the model reads of each (arxivcls.reading), for a transformer or a baseline; None
    for an ensemble (its report row says n/a)."""
    from arxivcls.reading import transformer_read, words_read

    if spec.kind == "baseline":
        return words_read
    if spec.kind == "transformer":
        from arxivcls.models import load_tokenizer

        tokenizer = load_tokenizer(spec.path)
        return lambda texts: transformer_read(tokenizer, texts, spec.max_length)[1]
    return None


# ---------------------------------------------------------------- the pass

@dataclasses.dataclass
class Scored:
    """Every row of the file in file order, with each model's probabilities (rows x its labels)."""
    rows: pd.DataFrame  # row, id, category, categories, has_text
    probs: dict  # model name -> float32 array
    model_seconds: dict  # model name -> actor seconds spent on it
    wall_seconds: float
    actors: int
    read: dict = dataclasses.field(default_factory=dict)  # model name -> per row: tokens, chars, cut (arxivcls.reading)

    @property
    def inference_papers_per_s(self) -> float:
        """The rate while the actors compute, by their own timers: no actor start, model load or idle wait."""
        return len(self.rows) * self.actors / max(sum(self.model_seconds.values()), 1e-9)


def score_file(papers: PapersFile, specs: list[ModelSpec], batch_size: int, num_actors: int = 0, total_rows: int = 0,
               log=print) -> Scored:
    import ray

    from arxivcls.evaluate import default_num_actors

    free = ray.available_resources()
    gpus = free.get("GPU", 0)
    actors = num_actors or default_num_actors(free)
    # The read task holds no CPU: it is cheap next to inference, and on a small machine the actors take every core.
    window = window_size(total_rows, actors, batch_size)
    dataset = ray.data.read_datasource(LabelledPapers(papers, window), num_cpus=0).map_batches(
        FileScorer, fn_constructor_kwargs={"specs": specs, "batch_size": batch_size, "num_threads": 1 if gpus < 1 else 0},
        batch_size=window, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=1 if gpus >= 1 else 0, num_cpus=1)
    started = time.perf_counter()
    parts = collect(dataset, started, total_rows, log)
    wall = time.perf_counter() - started
    if not parts:
        raise UserError(f"{papers.path} holds no papers")
    merged = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    order = np.argsort(merged["row"], kind="stable")
    rows = pd.DataFrame({key: merged[key][order] for key in ("row", "id", "category", "categories", "has_text")})
    read = {spec.name: {key: merged[f"read_{key}_{i}"][order] for key in ("tokens", "chars", "cut")}
            for i, spec in enumerate(specs) if f"read_tokens_{i}" in merged}
    return Scored(rows, {spec.name: merged[f"probs_{i}"][order] for i, spec in enumerate(specs)},
                  {spec.name: float(merged[f"seconds_{i}"].sum()) for i, spec in enumerate(specs)}, wall, actors, read)


def window_size(total_rows: int, actors: int, batch_size: int) -> int:
    """WINDOW_BATCHES batches, or fewer when the file is too small to give every actor a window."""
    return max(batch_size, min(batch_size * WINDOW_BATCHES, -(-total_rows // actors)))


def collect(dataset, started: float, total_rows: int, log, every_s: float = 60.0) -> list[dict]:
    """The scored batches as they arrive, with a progress line every `every_s` seconds. Its rate
    counts from the first scored window, so the actors' start-up does not lengthen the estimate."""
    parts, done, last, first = [], 0, started, None
    for part in raise_user_errors(dataset.iter_batches(batch_size=None, batch_format="numpy")):
        parts.append(part)
        done += len(part["row"])
        now = time.perf_counter()
        if first is None:
            first = (now, done)
        elif now - last >= every_s:
            last = now
            rate = (done - first[1]) / (now - first[0])
            log(f"scored {done} of {total_rows} rows in {now - started:.0f} s ({rate:.1f} papers/s; "
                f"about {max(total_rows - done, 0) / rate / 60:.0f} min to go)")
    return parts


def raise_user_errors(batches):
    """A UserError raised in a read task or an actor reaches the driver as itself, not as a Ray traceback."""
    import ray.exceptions

    try:
        yield from batches
    except ray.exceptions.RayError as e:
        cause = e
        while cause is not None and not isinstance(cause, UserError):
            cause = getattr(cause, "cause", None) or cause.__cause__
        if cause is None:
            raise
        raise UserError(str(cause.args[0]) if cause.args else str(cause)) from None
