"""`arxivcls evaluate --data FILE --model NAME=DIR ...`: saved models, and optionally a TF-IDF
baseline fitted on a training file, compared on any labelled papers file, with a study
evaluation's tables, plots and report.

Models may have different label sets. A paper whose primary category a model was never trained
on stays in: it is wrong for that model's exact accuracy (a cross-list or archive hit still
counts), its category is listed in the model's coverage, and every metric is reported again on
the papers whose category every model knows.
"""
import json
import re
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from arxivcls.errors import UserError
from arxivcls.file_scoring import ModelSpec, Scored

BASELINE = "baseline"
MODEL_NAME = re.compile(r"[A-Za-z0-9_.+-]+")
TOP_K = 3
SEED = 0  # bootstrap and baseline fit


# ---------------------------------------------------------------- arguments

def parse_models(items: list[str], with_baseline: bool) -> dict[str, str]:
    """NAME=DIR pairs, each name once ('baseline' is taken when --baseline is given)."""
    models = {}
    for item in items:
        name, equals, path = item.partition("=")
        if not equals or not path or not MODEL_NAME.fullmatch(name):
            raise UserError(f"--model expects NAME=DIR, NAME of letters, digits and _ . + -; got '{item}'")
        if name in models or (with_baseline and name == BASELINE):
            taken = "by --baseline" if name == BASELINE and with_baseline else "twice"
            raise UserError(f"--model {name}: the name is given {taken}; every model needs its own name")
        models[name] = path
    if not models and not with_baseline:
        raise UserError("give the models to evaluate: --model NAME=DIR (one or more) and/or --baseline TRAIN_FILE")
    return models


def check_out_dir(out) -> Path:
    """--out: new, empty, or an earlier output of this command (replaced whole when the new one is complete)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: a file, not a directory")
    if out.is_dir() and any(out.iterdir()) and not is_file_evaluation(out):
        raise UserError(f"--out {out} holds other files: give a new or empty directory, "
                        "or an earlier `evaluate --data` output to replace")
    existing = next(p for p in [out.parent, *out.parent.parents] if p.exists())
    try:
        tempfile.TemporaryDirectory(dir=existing).cleanup()
    except OSError as e:
        raise UserError(f"--out {out}: cannot write in {existing}: {e.strerror or e}")
    return out


def is_file_evaluation(directory: Path) -> bool:
    try:
        return "data_file" in json.loads((directory / "evaluation.json").read_text())
    except (OSError, ValueError):
        return False


def fit_file_baseline(train_file: str, log):
    """The study's TF-IDF baseline fitted on every labelled paper of `train_file`: (baseline, labels, training ids)."""
    from arxivcls.baseline import fit_baseline
    from arxivcls.data import normalize, read_table

    try:
        papers, _, _ = normalize(read_table(train_file))
    except UserError as e:
        raise UserError(f"--baseline {train_file}: {e}")
    labels = sorted(papers.category.unique())
    label_ids = papers.category.map({c: i for i, c in enumerate(labels)}).to_numpy()
    baseline = fit_baseline(papers.text.tolist(), label_ids, len(labels), seed=SEED)
    log(f"baseline: fitted on {len(papers)} papers in {len(labels)} categories of {train_file} in {baseline.fit_seconds:.1f} s")
    return baseline, tuple(labels), set(papers.id)


# ---------------------------------------------------------------- from scores to tables

def usable_papers(scored: Scored, path: str) -> tuple[pd.DataFrame, dict, dict]:
    """The papers with text and a category, each id once, as data.normalize keeps them; what was
    dropped. The probabilities of those papers, and (key "read") what each model read of them."""
    from arxivcls.data import usable_rows

    rows = scored.rows
    keep, dropped = usable_rows(rows.id, rows.category, rows.has_text.to_numpy())
    if not keep.any():
        raise UserError(f"{path}: no labelled papers: every row lacks text or a category "
                        f"({', '.join(f'{k} {v}' for k, v in dropped.items())})")
    read = {name: {key: values[keep] for key, values in per_paper.items()} for name, per_paper in scored.read.items()}
    return rows[keep].reset_index(drop=True), {name: p[keep] for name, p in scored.probs.items()}, dropped, read


def in_label_space(probs: np.ndarray, labels: tuple[str, ...], index: dict) -> np.ndarray:
    """A model's probabilities as columns of the shared label space; categories it lacks get 0."""
    spread = np.zeros((len(probs), len(index)), dtype=np.float32)
    spread[:, [index[label] for label in labels]] = probs
    return spread


def evaluate_scores(papers: pd.DataFrame, probs: dict, specs: list[ModelSpec], read: dict | None = None) -> dict:
    """compare() over all papers and over those every model covers, and the coverage tables; with
    `read` (model -> per paper), what each model read in the comparison."""
    from arxivcls.evaluate import compare, with_readings
    from arxivcls.reading import summary

    label_names = sorted(set(papers.category).union(*(spec.labels for spec in specs)))
    index = {label: i for i, label in enumerate(label_names)}
    test = papers.assign(label=papers.category.map(index).to_numpy())
    spread = {spec.name: in_label_space(probs[spec.name], spec.labels, index) for spec in specs}
    pairs = [(spec.name, specs[0].name) for spec in specs[1:]]
    tables = compare(spread, test, label_names, None, TOP_K, SEED, pairs)
    units = {"baseline": "words", "transformer": "tokens"}
    readings = {spec.name: summary(read[spec.name], units[spec.kind], spec.max_length) for spec in specs
                if spec.name in (read or {})}
    tables["comparison"], tables["readings"] = with_readings(tables["comparison"], readings), readings
    for spec in specs:
        tables["categories"][f"{spec.name}_trained_on"] = tables["categories"].category.isin(spec.labels)
    everyone = test.category.isin(set.intersection(*(set(spec.labels) for spec in specs))).to_numpy()
    covered = None
    if everyone.any():
        on_covered = compare({name: p[everyone] for name, p in spread.items()}, test[everyone].reset_index(drop=True),
                             label_names, None, TOP_K, SEED, pairs)
        covered = {key: on_covered[key] for key in ("comparison", "intervals", "differences")} | {"papers": int(everyone.sum())}
    return {**tables, **coverage(test, spread, specs), "covered": covered, "probs": spread, "labels": test.label.to_numpy()}


def coverage(test: pd.DataFrame, spread: dict, specs: list[ModelSpec]) -> dict:
    """Per model: the papers whose category it knows, its accuracy and macro F1 on them; the categories it never saw."""
    from arxivcls.metrics import classification_metrics, coverage_tables

    table, unseen = coverage_tables(test.category, {spec.name: spec.labels for spec in specs})
    for spec in specs:
        own = test.category.isin(spec.labels).to_numpy()
        scores = classification_metrics(test.label[own], spread[spec.name][own], TOP_K) if own.any() else {}
        table.loc[spec.name, ["covered_accuracy", "covered_macro_f1"]] = [scores.get("accuracy"), scores.get("macro_f1")]
    return {"coverage": table, "unseen_categories": unseen}


# ---------------------------------------------------------------- output

def draw_file_plots(out_dir: Path, tables: dict) -> dict:
    from arxivcls import plots

    probs, focus, labels = tables["probs"], tables["focus"], tables["labels"]
    calibration = {name: (p.max(axis=1), tables["predicted"][name] == labels) for name, p in probs.items()}
    return {
        "confusion_matrix": plots.plot_confusion_heatmap(out_dir, labels, tables["predicted"][focus], tables["label_names"], focus),
        "reliability": plots.plot_reliability(out_dir, calibration),
        "confusion_pairs": plots.plot_confusion_pairs(out_dir, tables["confusion_pairs"], focus),
    }


def predictions_table(papers: pd.DataFrame, tables: dict) -> pd.DataFrame:
    predictions = pd.DataFrame({"row": papers.row, "id": papers.id, "true": papers.category})
    for name, p in tables["probs"].items():
        predictions[f"{name}_pred"] = np.asarray(tables["label_names"])[tables["predicted"][name]]
        predictions[f"{name}_confidence"] = p.max(axis=1)
    return predictions


def write_file_results(out: Path, tables: dict, papers: pd.DataFrame, evaluation: dict) -> None:
    from arxivcls import report
    from arxivcls.files import atomic_directory

    covered = tables["covered"] or {}
    with atomic_directory(out) as staging:
        report.write_tables(staging, {name: tables[name] for name in (
            "comparison", "intervals", "differences", "categories", "confusion_pairs", "category_differences", "coverage",
            "unseen_categories")})
        report.write_tables(staging, {f"covered_{name}": covered[name] for name in ("comparison", "intervals", "differences")
                                      if name in covered})
        predictions_table(papers, tables).to_parquet(staging / "predictions.parquet", index=False)
        (staging / "evaluation.json").write_text(json.dumps(evaluation, indent=1))
        report.write_report_md(staging, {
            **tables, "study_name": Path(evaluation["data_file"]).name, "papers_kind": "evaluated",
            "comparison_title": "Comparison on every labelled paper of the file (95% bootstrap intervals)",
            "test_papers": len(papers), "identical": {}, "plots": draw_file_plots(staging, tables),
            "study_title": "Data and models", "study": about(evaluation),
        })


def about(evaluation: dict) -> dict:
    """The report's facts about the file, the models and the run."""
    scoring = evaluation["scoring"]
    facts = {"data file": evaluation["data_file"], "schema": evaluation["schema"], "rows read": evaluation["rows_read"],
             "papers evaluated": evaluation["papers"], "rows dropped": evaluation["dropped"]}
    facts.update({f"model {name}": {k: v for k, v in model.items() if k != "name"} for name, model in evaluation["models"].items()})
    facts["scoring"] = {k: v for k, v in scoring.items() if k != "model_actor_seconds"}
    if "baseline_training_overlap" in evaluation:
        facts["papers also in the baseline's training file"] = evaluation["baseline_training_overlap"]
    return facts


def evaluation_record(data: str, papers_file, specs: list[ModelSpec], scored: Scored, papers: pd.DataFrame, dropped: dict,
                      batch_size: int) -> dict:
    return {
        "data_file": str(data), "schema": papers_file.schema, "limit": papers_file.limit, "rows_read": len(scored.rows),
        "papers": len(papers), "dropped": dropped,
        "models": {spec.name: {"kind": spec.kind, "path": spec.path, "labels": len(spec.labels), "max_length": spec.max_length,
                               "precision": spec.precision if spec.kind != "baseline" else None} for spec in specs},
        "scoring": {"wall_seconds": round(scored.wall_seconds, 2), "papers_per_s": round(len(scored.rows) / scored.wall_seconds, 2),
                    "inference_papers_per_s": round(scored.inference_papers_per_s, 2),
                    "actors": scored.actors, "batch_size": batch_size,
                    "model_actor_seconds": {k: round(v, 2) for k, v in scored.model_seconds.items()}},
        "bootstrap": {"seed": SEED},
    }


# ---------------------------------------------------------------- the command

def evaluate_file(data: str, model_items: list[str], out, baseline_file: str | None = None, limit: int | None = None,
                  batch_size: int = 64, num_actors: int = 0, address: str | None = None, log=print) -> Path:
    import ray

    from arxivcls.file_scoring import count_labelled, model_spec, open_papers_file, score_file
    from arxivcls.raycluster import connect_ray
    from arxivcls.stats import N_RESAMPLES

    for flag, value in (("--limit", limit), ("--batch-size", batch_size), ("--actors", num_actors)):
        if value is not None and value < (0 if flag == "--actors" else 1):
            raise UserError(f"{flag} must be >= {0 if flag == '--actors' else 1}, got {value}")
    models = parse_models(model_items, with_baseline=bool(baseline_file))
    out = check_out_dir(out)
    papers_file = open_papers_file(data, limit)
    rows, labelled = count_labelled(papers_file)
    if not labelled:
        raise UserError(f"{data}: no labelled papers: none of its {rows} rows has a primary category")
    specs = [model_spec(name, path) for name, path in models.items()]
    baseline = fit_file_baseline(baseline_file, log) if baseline_file else None
    connect_ray(address, log=log)
    if baseline:
        specs.append(ModelSpec(BASELINE, str(baseline_file), "baseline", baseline[1], fitted=ray.put(baseline[0])))
    log(f"scoring {rows} rows of {data} ({labelled} labelled; schema {papers_file.schema}) with " + ", ".join(
        f"{s.name} ({len(s.labels)} categories" + (f", max_length {s.max_length})" if s.max_length else ")") for s in specs))
    scored = score_file(papers_file, specs, batch_size, num_actors, rows, log)
    log(f"scored {len(scored.rows)} rows in {scored.wall_seconds:.1f} s ({len(scored.rows) / scored.wall_seconds:.1f} papers/s, "
        f"{scored.actors} actors)")
    papers, probs, dropped, read = usable_papers(scored, data)
    tables = evaluate_scores(papers, probs, specs, read)
    evaluation = evaluation_record(data, papers_file, specs, scored, papers, dropped, batch_size)
    evaluation["bootstrap"]["resamples"] = N_RESAMPLES
    if baseline:
        evaluation["baseline_training_overlap"] = int(papers.id.isin(baseline[2]).sum())
    write_file_results(out, tables, papers, evaluation)
    log(f"results written to {out}/ (report.md, comparison.csv, coverage.csv, ...); rows dropped: "
        + ", ".join(f"{k} {v}" for k, v in dropped.items()))
    log(tables["coverage"][["covered_papers", "coverage", "unseen_categories"]].join(
        tables["comparison"][["accuracy", "crosslist_accuracy", "macro_f1"]]).round(4).to_string())
    return out
