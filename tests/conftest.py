"""Shared fixtures: real papers (a small sample read by path), a tiny random BERT with a tokenizer
trained on the spot (no network), and one local Ray cluster per test session."""
import os
from pathlib import Path

import pandas as pd
import pytest

from arxivcls.models import make_tiny_bert

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ARXIVCLS_NO_MPS", "1")

SAMPLE_DATA = Path(__file__).resolve().parents[1] / "data" / "arxiv_sample.parquet"  # committed: every clone has it


@pytest.fixture(scope="session", autouse=True)
def converted_model_cache(tmp_path_factory):
    """Safetensors copies of pickled test models go under pytest's tmp, never ~/.cache."""
    os.environ.setdefault("ARXIVCLS_MODEL_CACHE", str(tmp_path_factory.mktemp("converted_models")))


@pytest.fixture(scope="session")
def real_papers() -> pd.DataFrame:
    """1,200 real papers from 6 categories (a fixed sample of the embedded data/arxiv_sample.parquet)."""
    df = pd.read_parquet(SAMPLE_DATA, columns=["id", "title", "summary", "category_code", "categories", "source"])
    keep = ["cs.CV", "cs.CL", "math.AP", "quant-ph", "cs.RO", "cs.LG"]
    df = df[df.category_code.isin(keep)]
    return df.groupby("category_code").sample(200, random_state=0).reset_index(drop=True)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, real_papers) -> Path:
    texts = (real_papers.title + " " + real_papers.summary).tolist()
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), texts)


@pytest.fixture(scope="session")
def papers_file(tmp_path_factory, real_papers) -> Path:
    path = tmp_path_factory.mktemp("data") / "papers.parquet"
    real_papers.to_parquet(path, index=False)
    return path


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray cluster per test module (2 CPUs, as this machine); modules that run the CLI
    in a subprocess start their own cluster there instead."""
    import ray

    from arxivcls.raycluster import start_local_ray

    start_local_ray(num_cpus=2)
    yield ray
    ray.shutdown()


def tiny_study_yaml(tmp_path: Path, papers_file: Path, tiny_bert: Path, **sections) -> Path:
    """A study config for the tiny BERT, everything under tmp_path."""
    import yaml

    config = {
        "data": {"path": str(papers_file), "max_length": 64, "cache_dir": str(tmp_path / "cache")},
        "model": {"name": str(tiny_bert)},
        "train": {"learning_rate": 1e-3, "batch_size": 16, "epochs": 2, "cpus_per_worker": 1, "eval_batch_size": 128,
                  "storage_path": str(tmp_path / "runs"), "output_dir": str(tmp_path / "models" / "train")},
        "tune": {"study": "tiny", "num_samples": 3, "results_dir": str(tmp_path / "results"),
                 "models_dir": str(tmp_path / "models"),
                 "search_space": {"learning_rate": {"type": "loguniform", "low": 1e-4, "high": 3e-3},
                                  "epochs": {"type": "int", "low": 1, "high": 3}}},
        "eval": {"batch_size": 64},
    }
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def pytest_sessionfinish(session, exitstatus):
    import reliability

    reliability.write_table()
