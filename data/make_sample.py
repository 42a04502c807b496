"""Writes data/arxiv_sample.parquet, the embedded default dataset, from the full papers file.

The 10 largest primary categories of the full file, 500 papers drawn at random from each
(seed 0), with the columns of the arxiv-digest schema plus the full category list:

    python data/make_sample.py ../shared/data/arxiv_papers.parquet
"""
import sys

import pandas as pd

CATEGORIES, PER_CATEGORY, SEED = 10, 500, 0
COLUMNS = ["id", "title", "summary", "category_code", "categories", "source"]

papers = pd.read_parquet(sys.argv[1], columns=COLUMNS)
largest = papers.category_code.value_counts().index[:CATEGORIES]
sample = (papers[papers.category_code.isin(largest)].groupby("category_code", group_keys=False)
          .sample(PER_CATEGORY, random_state=SEED).sort_values("id").reset_index(drop=True))
sample.to_parquet("data/arxiv_sample.parquet", index=False, compression="zstd")
print(f"{len(sample)} papers, {sample.category_code.nunique()} categories -> data/arxiv_sample.parquet")
