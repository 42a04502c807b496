"""`arxivcls predict`: top-k categories for one paper (--title/--abstract) or a file of papers (--input)."""
from pathlib import Path

import numpy as np
import pandas as pd

from arxivcls.classifier import paper_text
from arxivcls.errors import UserError
from arxivcls.files import atomic_path


def top_k(probs: np.ndarray, id2label: dict, k: int) -> list[list[tuple[str, float]]]:
    k = min(k, probs.shape[1])
    best = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[(id2label[int(j)], float(row[j])) for j in idx] for row, idx in zip(probs, best)]


def read_papers(path: str) -> pd.DataFrame:
    from arxivcls.data import read_table

    df = read_table(path)
    abstract = next((c for c in ("abstract", "summary") if c in df.columns), None)
    if "title" not in df.columns and abstract is None:
        raise UserError(f"{path} needs a 'title' and/or an 'abstract' (or 'summary') column; it has {sorted(df.columns)[:10]}")
    column = lambda name: df[name].fillna("").astype(str) if name in df.columns else pd.Series("", index=df.index)
    ids = df["id"].astype(str) if "id" in df.columns else pd.Series(range(len(df)), index=df.index).astype(str)
    return pd.DataFrame({"id": ids, "text": [paper_text(t, a) for t, a in zip(column("title"), column(abstract))]})


def predict_cli(args) -> None:
    from arxivcls.categories import category_name
    from arxivcls.ensemble import load_model

    if args.top_k < 1:
        raise UserError("--top-k must be >= 1")
    if bool(args.input) == bool(args.title):
        raise UserError("give either --title (with --abstract) or --input FILE")
    if not Path(args.model).is_dir():
        raise UserError(f"--model {args.model}: no such directory")
    predict_probs, id2label, _ = load_model(args.model)
    papers = read_papers(args.input) if args.input else pd.DataFrame({"id": ["paper"], "text": [paper_text(args.title, args.abstract)]})
    if papers.empty:
        raise UserError(f"{args.input} holds no papers")
    ranked = top_k(predict_probs(papers.text.tolist()), id2label, args.top_k)

    if args.output:
        out = Path(args.output)
        rows = [{"id": pid, **{f"top{r + 1}": c for r, (c, _) in enumerate(ranks)},
                 **{f"top{r + 1}_prob": round(p, 5) for r, (_, p) in enumerate(ranks)}} for pid, ranks in zip(papers.id, ranked)]
        frame = pd.DataFrame(rows)
        with atomic_path(out) as tmp:  # the only file written: --output itself, never a path from the input
            if out.suffix.lower() == ".csv":
                frame.to_csv(tmp, index=False)
            elif out.suffix.lower() in {".jsonl", ".json"}:
                frame.to_json(tmp, orient="records", lines=True)
            else:
                raise UserError(f"--output must end in .csv or .jsonl, got '{out.name}'")
        print(f"wrote {len(frame)} predictions to {out}")
        return
    for pid, ranks in zip(papers.id, ranked):
        if len(papers) > 1:
            print(pid)
        for code, prob in ranks:
            print(f"  {code:<20} {prob:6.3f}  {category_name(code)}")
