"""The command line as a user meets it: --version, documented arguments, one-line errors."""
import json

import pandas as pd
import pytest

from arxivcls.cli import build_parser, main


def test_version_and_every_argument_documented_with_its_default(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("arxivcls ")
    subcommands = build_parser()._subparsers._group_actions[0].choices
    assert set(subcommands) == {"prepare", "plan", "train", "tune", "evaluate", "predict", "serve"}
    for name, parser in subcommands.items():
        for action in parser._actions:
            if action.dest != "help":
                assert action.help, f"{name} {action.dest} has no help"
        assert "(default:" in parser.format_help(), name


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_a_single_category_file_is_refused(tmp_path, capsys):
    papers = tmp_path / "one.csv"
    pd.DataFrame({"id": [f"p{i}" for i in range(30)], "title": ["t"] * 30, "summary": ["an abstract"] * 30,
                  "category_code": ["cs.LG"] * 30}).to_csv(papers, index=False)
    assert main(["prepare", "--data", str(papers), "--cache-dir", str(tmp_path / "cache")]) == 2
    assert "a classifier needs at least 2" in one_error_line(capsys)


def test_evaluate_without_the_study_s_models_or_data_is_one_line(tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    models = tmp_path / "models"
    (results / "study.json").write_text(json.dumps({"models": {"tuned": str(models / "tuned")},
                                                    "prepared_data": str(tmp_path / "gone")}))
    assert main(["evaluate", str(results)]) == 2
    assert "run the study (arxivcls tune) on this machine first" in one_error_line(capsys)
    (models / "tuned").mkdir(parents=True)
    (models / "tuned" / "config.json").write_text("{}")
    assert main(["evaluate", str(results)]) == 2
    assert "prepared data is missing" in one_error_line(capsys)


def test_predict_on_a_config_without_model_type_is_one_line(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    assert main(["predict", "--model", str(tmp_path), "--title", "x"]) == 2
    assert "not a usable model config" in one_error_line(capsys)
