"""arxivcls prepare | plan | train | tune | evaluate | predict | serve.

Bad input or configuration: one line `error: ...` on stderr, exit code 2, no traceback.
"""
import argparse
import os
import sys

from arxivcls.errors import UserError


def _config(args, **overrides):
    from arxivcls.api import study_config

    return study_config(args.config, getattr(args, "data", None), overrides, args.set or [])


def cmd_prepare(args) -> None:
    from arxivcls.data import describe, prepare

    options = {"data.min_per_class": args.min_per_class, "data.max_papers": args.max_papers, "data.cache_dir": args.cache_dir}
    config = _config(args, **{key: value for key, value in options.items() if value is not None})
    print(describe(prepare(config.data)))


def cmd_train(args) -> None:
    from arxivcls.train import run_training

    run_training(_config(args), address=args.address)


def cmd_tune(args) -> None:
    from arxivcls.api import tune

    tune(_config(args), resume=args.resume, warm_start=args.warm_start, address=args.address, worker_output=True)


def cmd_plan(args) -> None:
    from arxivcls.api import plan

    print(plan(_config(args), address=args.address, cpus=args.cpus, gpus=args.gpus, nodes=args.nodes,
               papers_per_s=args.papers_per_s, gpu_figures=args.gpu_figures))


def cmd_evaluate(args) -> None:
    if bool(args.results_dir) == bool(args.data):
        raise UserError("give either RESULTS_DIR (a finished study) or --data FILE (saved models on a labelled file)")
    if args.data:
        from arxivcls.evaluate_file import evaluate_file

        if not args.out:
            raise UserError("--data needs --out DIR, the directory the report and tables go to")
        evaluate_file(args.data, args.model or [], args.out, args.baseline, args.limit, args.batch_size, args.actors, args.address)
        return
    from arxivcls.evaluate import evaluate_study

    given = [flag for flag, value in (("--out", args.out), ("--baseline", args.baseline), ("--limit", args.limit)) if value is not None]
    if given:
        raise UserError(f"{', '.join(given)}: only with --data, not with RESULTS_DIR")
    extra = dict(_split_named(m) for m in args.model or [])
    evaluate_study(args.results_dir, extra_models=extra, address=args.address)


def cmd_predict(args) -> None:
    from arxivcls.predict import predict_cli

    predict_cli(args)


def cmd_serve(args) -> None:
    from arxivcls.serve import serve_cli

    serve_cli(args)


def _split_named(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise UserError(f"--model expects NAME=PATH, got '{item}'")
    name, path = item.split("=", 1)
    return name, path


SHOW_DEFAULTS = argparse.ArgumentDefaultsHelpFormatter


def add_prepare(sub) -> None:
    p = sub.add_parser("prepare", formatter_class=SHOW_DEFAULTS, help="validate, filter and split a papers file (cached)")
    p.add_argument("config", nargs="?", help="study config whose data section applies, e.g. tune/cpu.yaml "
                                             "(default: the built-in one, data.path data/arxiv_sample.parquet)")
    p.add_argument("--data", help="papers file: .csv, .parquet or .jsonl (overrides data.path)")
    p.add_argument("--min-per-class", type=int, help="drop categories with fewer papers (data.min_per_class: 5)")
    p.add_argument("--max-papers", type=int, help="stratified sample size (data.max_papers: all)")
    p.add_argument("--cache-dir", help="where the prepared splits are written; train/tune find them there by content "
                                       "(data.cache_dir: .cache/arxivcls)")
    p.add_argument("--set", action="append", metavar="section.key=value", help="override a config value")
    p.set_defaults(func=cmd_prepare)


def add_study_commands(sub) -> None:
    for name, func, help_text in (("train", cmd_train, "one Ray Train run with the config's hyperparameters"),
                                  ("tune", cmd_tune, "a Ray Tune study (OptunaSearch + ASHA), then the evaluation")):
        p = sub.add_parser(name, formatter_class=SHOW_DEFAULTS, help=help_text)
        p.add_argument("config", help="study config, e.g. tune/cpu.yaml")
        p.add_argument("--data", help="papers file (overrides data.path)")
        p.add_argument("--set", action="append", metavar="section.key=value", help="override a config value")
        p.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else start a local one)")
        if name == "tune":
            p.add_argument("--resume", action="store_true", help="continue an interrupted study")
            p.add_argument("--warm-start", metavar="STUDY", help="start the search from the finished trials of an earlier "
                                                                 "study: its name under the same storage, or its optuna.db")
        p.set_defaults(func=func)


def add_plan(sub) -> None:
    p = sub.add_parser("plan", formatter_class=SHOW_DEFAULTS,
                       help="what a study would do and cost (data, concurrency, epochs, disk, time), without training")
    p.add_argument("config", help="study config, e.g. tune/scibert.yaml")
    p.add_argument("--data", help="papers file (overrides data.path)")
    p.add_argument("--set", action="append", metavar="section.key=value", help="override a config value")
    p.add_argument("--address", help="plan for this running Ray cluster's free resources")
    p.add_argument("--gpus", type=float, help="plan for a declared cluster with this many GPUs in all")
    p.add_argument("--cpus", type=float, help="... this many CPUs in all (default: this machine's per node)")
    p.add_argument("--nodes", type=int, help="... spread over this many equal nodes (default 1)")
    p.add_argument("--papers-per-s", type=float, help="training papers/s of one worker (default: measured on a CPU, "
                                                      "derived from FLOPs for GPU workers)")
    p.add_argument("--gpu-figures", metavar="FILE.json", help="price GPU workers from this measurement: the "
                                                             "gpu_check.json that `python3 -m benchmarks.gpu_check` writes")
    p.set_defaults(func=cmd_plan)


def add_model_commands(sub) -> None:
    p = sub.add_parser("evaluate", formatter_class=SHOW_DEFAULTS,
                       help="re-run a finished study's evaluation, or compare saved models on any labelled papers file (--data)")
    p.add_argument("results_dir", nargs="?", help="a finished study's results directory, e.g. reports/cpu")
    p.add_argument("--data", metavar="FILE", help="instead: a labelled papers file (.parquet, .csv, .jsonl; any schema prepare reads)")
    p.add_argument("--model", action="append", metavar="NAME=PATH",
                   help="a saved model, baseline or ensemble directory (repeatable); with RESULTS_DIR, an extra model to compare")
    p.add_argument("--baseline", metavar="TRAIN_FILE", help="with --data: also a TF-IDF baseline fitted on this labelled file")
    p.add_argument("--out", metavar="DIR", help="with --data: where the report and tables go (new, empty, or an earlier --data output)")
    p.add_argument("--limit", type=int, help="with --data: score only the file's first N rows (to estimate rate and cost)")
    p.add_argument("--batch-size", type=int, default=64, help="with --data: papers per forward pass")
    p.add_argument("--actors", type=int, default=0, help="with --data: inference actors, each holding every model "
                                                         "(0: one per free GPU, else one per free CPU, at most 4)")
    p.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else start a local one)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", formatter_class=SHOW_DEFAULTS, help="top-k categories for papers")
    p.add_argument("--model", required=True, help="a saved model, baseline or ensemble directory")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--title", help="one paper's title")
    source.add_argument("--input", help="CSV / JSONL / Parquet with title and abstract (or summary) columns")
    p.add_argument("--abstract", default="", help="the paper's abstract, with --title")
    p.add_argument("--output", help="write predictions here (.csv or .jsonl) instead of stdout")
    p.add_argument("--top-k", type=int, default=3, help="categories per paper")
    p.set_defaults(func=cmd_predict)


def add_serve(sub) -> None:
    p = sub.add_parser("serve", formatter_class=SHOW_DEFAULTS, help="serve a saved model over HTTP with Ray Serve (POST /predict)")
    p.add_argument("--model", required=True, help="a saved model, baseline or ensemble directory (the path must exist on every node)")
    p.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else start a local one)")
    p.add_argument("--host", default="127.0.0.1", help="address the HTTP endpoint binds to (on the head node)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port")
    p.add_argument("--replicas", type=int, default=1, help="model replicas, each loading the model once")
    p.add_argument("--cpus-per-replica", type=float, default=1.0, help="CPUs Ray reserves for each replica (its torch threads)")
    p.add_argument("--gpus-per-replica", type=float, default=0.0, help="GPUs Ray reserves for each replica (0: the model runs on CPUs)")
    p.add_argument("--max-batch-size", type=int, default=16, help="papers per forward pass at most (1 = no batching)")
    p.add_argument("--batch-wait-ms", type=float, default=5.0, help="how long a forward pass waits for more papers")
    p.add_argument("--max-papers", type=int, default=64, help="papers per request at most (more: HTTP 413)")
    p.add_argument("--max-chars", type=int, default=20000, help="characters of title + abstract per paper at most (more: HTTP 413)")
    p.set_defaults(func=cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    from importlib.metadata import version

    parser = argparse.ArgumentParser(prog="arxivcls", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"arxivcls {version('arxivcls')}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_prepare, add_plan, add_study_commands, add_model_commands, add_serve):
        add(sub)
    return parser


def main(argv=None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
