"""Load papers in any of three schemas, build text, filter rare classes, split, label map; cached on disk."""
import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from arxivcls.config import DataConfig
from arxivcls.errors import UserError
from arxivcls.files import atomic_directory

# name -> (columns that must be present, abstract column, how to get the primary category)
SCHEMAS = {
    "arxiv-digest": ({"id", "title", "summary", "category_code", "source"}, "summary", "category_code"),
    "kaggle": ({"id", "title", "summary", "category_code"}, "summary", "category_code"),
    "arxiv-oai": ({"id", "title", "abstract", "categories"}, "abstract", "categories"),
}
SPLITS = ("train", "val", "test")
MAX_TEXT_CHARS = 50_000  # far beyond 512 tokens; keeps a pathological 1 MB abstract from stalling tokenization


FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".csv.gz": "csv", ".jsonl": "jsonl", ".json": "jsonl",
           ".jsonl.gz": "jsonl"}


def table_format(path: str) -> str:
    """'parquet', 'csv' or 'jsonl' for an existing, non-empty papers file; else a UserError."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"data file not found: {path}")
    if not p.is_file():
        raise UserError(f"data path is not a file: {path}")
    if p.stat().st_size == 0:
        raise UserError(f"data file is empty: {path}")
    suffix = "".join(p.suffixes[-2:]).lower() if p.suffix == ".gz" else p.suffix.lower()
    if suffix not in FORMATS:
        raise UserError(f"unsupported data format '{p.suffix}' for {path}: use .csv, .parquet or .jsonl")
    return FORMATS[suffix]


def read_table(path: str) -> pd.DataFrame:
    table = table_format(path)
    try:
        if table == "parquet":
            return pd.read_parquet(path)
        if table == "csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
        return pd.read_json(path, lines=True, dtype=False)
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not valid UTF-8 text (byte {e.start}): re-encode it as UTF-8")
    except (ValueError, OSError, pd.errors.ParserError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot read {path} as {table}: {first_line}")
    except Exception as e:  # pyarrow raises its own error types for corrupt files
        raise UserError(f"cannot read {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


def detect_schema(columns) -> str:
    columns = set(columns)
    for name, (required, _, _) in SCHEMAS.items():
        if required <= columns:
            return name
    missing = "; ".join(f"{name} needs {sorted(req - columns)}" for name, (req, _, _) in SCHEMAS.items() if name != "arxiv-digest")
    raise UserError(f"no known schema fits columns {sorted(columns)[:12]}: {missing}")


def _clean(series: pd.Series) -> pd.Series:
    text = series.fillna("").astype(str).str.slice(0, MAX_TEXT_CHARS)
    return text.map(lambda s: re.sub(r"\s+", " ", s).strip())


def normalize(raw: pd.DataFrame) -> tuple[pd.DataFrame, str, dict]:
    """Return (papers with columns id, text, category), schema name, and what was dropped."""
    schema = detect_schema(raw.columns)
    papers = normalize_rows(raw, schema)
    keep, dropped = usable_rows(papers.id, papers.category, (papers.text != "").to_numpy())
    if not keep.any():
        raise UserError("no usable papers: every row lacks text or a category")
    return papers[keep].reset_index(drop=True), schema, dropped


def normalize_rows(raw: pd.DataFrame, schema: str) -> pd.DataFrame:
    """id, text, category and listed categories of every row, none dropped."""
    _, abstract_col, category_col = SCHEMAS[schema]
    category = raw[category_col].fillna("").astype(str).str.strip()
    if schema == "arxiv-oai":
        category = category.str.split().str[0].fillna("")
    return pd.DataFrame({
        "id": raw["id"].fillna("").astype(str).str.strip().str.replace(r"v\d+$", "", regex=True),
        "text": (_clean(raw["title"]) + " " + _clean(raw[abstract_col])).str.strip(),
        "category": category,
        # every listed category, primary first (the digest and OAI schemas have them)
        "categories": raw["categories"].fillna("").astype(str) if "categories" in raw.columns else category,
    })


def usable_rows(ids: pd.Series, categories: pd.Series, has_text: np.ndarray) -> tuple[np.ndarray, dict]:
    """Which rows a study uses (text and a category; an id with two categories dropped; other
    repeated ids kept once, the first), and how many were dropped for each reason."""
    keep = has_text & (categories != "").to_numpy()
    dropped = {"no_text": int((~has_text).sum()), "no_category": int((categories == "").sum())}
    per_id = categories[keep].groupby(ids[keep]).nunique()
    conflicting = per_id.index[per_id > 1]
    dropped["conflicting_duplicate_ids"] = len(conflicting)
    keep &= ~ids.isin(conflicting).to_numpy()
    repeated = np.zeros(len(ids), dtype=bool)
    repeated[keep] = ids[keep].duplicated(keep="first").to_numpy()
    dropped["duplicate_ids"] = int(repeated.sum())
    return keep & ~repeated, dropped


def stratified_sample(papers: pd.DataFrame, max_papers: int, seed: int) -> pd.DataFrame:
    """About max_papers rows, every class sampled at the same rate: the class imbalance is kept.
    (prepare() then drops the classes left with fewer than min_per_class papers, as for the full data.)"""
    if max_papers <= 0 or max_papers >= len(papers):
        return papers
    fraction = max_papers / len(papers)
    rng = np.random.default_rng(seed)
    parts = [group.iloc[rng.permutation(len(group))[: round(len(group) * fraction)]]
             for _, group in papers.groupby("category", sort=True)]
    return pd.concat(parts).reset_index(drop=True)


def stratified_split(papers: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int) -> dict[str, pd.DataFrame]:
    """Per class: shuffle, then test / val / train. Classes with >= 3 papers get >= 1 in each split."""
    rng = np.random.default_rng(seed)
    assignment = np.empty(len(papers), dtype=object)
    for _, index in papers.groupby("category", sort=True).indices.items():
        index = index[rng.permutation(len(index))]
        n = len(index)
        n_test = max(1, round(n * test_fraction)) if n >= 3 else 0
        n_val = max(1, round(n * val_fraction)) if n >= 3 else 0
        assignment[index[:n_test]] = "test"
        assignment[index[n_test:n_test + n_val]] = "val"
        assignment[index[n_test + n_val:]] = "train"
    return {name: papers[assignment == name].reset_index(drop=True) for name in SPLITS}


@dataclass
class Prepared:
    """A prepared dataset on disk: <dir>/{train,val,test}.parquet (id, text, label) and meta.json."""
    dir: str
    key: str
    id2label: dict
    train_counts: dict  # category -> papers in train
    meta: dict

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def label2id(self) -> dict:
        return {label: int(i) for i, label in self.id2label.items()}

    def split_path(self, name: str) -> Path:
        return Path(self.dir) / f"{name}.parquet"

    def load_split(self, name: str) -> pd.DataFrame:
        return pd.read_parquet(self.split_path(name))


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_key(cfg: DataConfig) -> str:
    options = {k: v for k, v in asdict(cfg).items() if k not in {"path", "cache_dir", "max_length"}}
    blob = json.dumps({"file": _file_digest(cfg.path), "options": options, "version": 2}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_prepared(directory) -> Prepared:
    meta = json.loads((Path(directory) / "meta.json").read_text())
    return Prepared(str(directory), meta["key"], {int(k): v for k, v in meta["id2label"].items()}, meta["train_counts"], meta)


def check_data_file(path: str) -> None:
    if not Path(path).is_file():
        raise UserError(f"data file not found: {Path(path).expanduser().resolve()} (data.path: give another file with --data PATH)")


def prepare(cfg: DataConfig, log=print) -> Prepared:
    """Prepare (or load from cache) the split for this file and these options."""
    check_data_file(cfg.path)
    key = cache_key(cfg)
    directory = Path(cfg.cache_dir).expanduser() / "prepared" / key
    if (directory / "meta.json").is_file():
        prepared = load_prepared(directory)
        log(f"prepared data: cache hit {directory}")
        return prepared

    papers, schema, dropped = normalize(read_table(cfg.path))
    log(f"read {cfg.path}: schema {schema}, {len(papers)} usable papers, {papers.category.nunique()} categories")
    if cfg.top_categories:
        counts = papers.category.value_counts()
        largest = sorted(counts.index, key=lambda c: (-counts[c], c))[:cfg.top_categories]  # ties: by name
        papers = papers[papers.category.isin(largest)].reset_index(drop=True)
        log(f"top_categories={cfg.top_categories}: {len(papers)} papers of the {len(largest)} largest categories")
    if cfg.max_per_class:
        shuffled = papers.sample(frac=1.0, random_state=cfg.seed)
        papers = shuffled.groupby("category").head(cfg.max_per_class).reset_index(drop=True)
    if 0 < cfg.max_papers < len(papers):
        papers = stratified_sample(papers, cfg.max_papers, cfg.seed)
        log(f"max_papers={cfg.max_papers}: a stratified sample of {len(papers)} papers in {papers.category.nunique()} categories")
    counts = papers.category.value_counts()
    rare = counts[counts < cfg.min_per_class]
    papers = papers[~papers.category.isin(rare.index)]
    if papers.empty:
        raise UserError(f"every category has fewer than min_per_class={cfg.min_per_class} papers"
                        f"{' in the sample of max_papers=' + str(cfg.max_papers) if cfg.max_papers else ''}: nothing left to train on")
    if papers.category.nunique() < 2:
        raise UserError(f"{cfg.path}: {papers.category.nunique()} category left after filtering; a classifier needs at least 2")
    splits = stratified_split(papers, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    categories = sorted(papers.category.unique())
    label2id = {c: i for i, c in enumerate(categories)}
    train_counts = splits["train"].category.value_counts().reindex(categories, fill_value=0)
    meta = {
        "key": key, "source": str(cfg.path), "schema": schema, "options": asdict(cfg),
        "dropped_rows": dropped,
        "dropped_categories": {c: int(n) for c, n in rare.items()},
        "split_sizes": {name: len(df) for name, df in splits.items()},
        "id2label": {i: c for c, i in label2id.items()},
        "train_counts": {c: int(n) for c, n in train_counts.items()},
    }
    with atomic_directory(directory) as staging:
        for name, df in splits.items():
            df = df.assign(label=df.category.map(label2id).astype("int64"))[["id", "text", "label", "category", "categories"]]
            df.to_parquet(staging / f"{name}.parquet", index=False)
        (staging / "meta.json").write_text(json.dumps(meta, indent=1))
    return load_prepared(directory)


def describe(prepared: Prepared) -> str:
    meta = prepared.meta
    counts = pd.Series(prepared.train_counts).sort_values(ascending=False)
    lines = [
        f"schema: {meta['schema']}   cache: {prepared.dir}",
        f"categories kept: {prepared.num_labels}   split sizes: " + ", ".join(f"{k} {v}" for k, v in meta["split_sizes"].items()),
        "rows dropped: " + ", ".join(f"{k} {v}" for k, v in meta["dropped_rows"].items()),
        f"categories dropped (< {meta['options']['min_per_class']} papers): {len(meta['dropped_categories'])}"
        + (f" ({', '.join(f'{c}:{n}' for c, n in list(meta['dropped_categories'].items())[:20])}"
           + (" ..." if len(meta["dropped_categories"]) > 20 else "") + ")" if meta["dropped_categories"] else ""),
        "train papers per category:",
    ]
    lines += [f"  {cat:<22} {n}" for cat, n in counts.items()]
    return "\n".join(lines)
