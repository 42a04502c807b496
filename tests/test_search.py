"""What the study tells Optuna, how a trial's best checkpoint is picked, and per-trial truncation (fast)."""
from types import SimpleNamespace

import numpy as np
import optuna
import pytest

from arxivcls.checkpoints import best_checkpoint
from arxivcls.config import Config
from arxivcls.features import TokenizedSplit, truncate_split
from arxivcls.search import make_searcher, tune_search_space


def test_optuna_holds_each_trial_as_the_study_ends_it(tmp_path):
    config = Config()
    config.tune.num_samples, config.tune.study = 4, "s"
    config.tune.search_space = {"learning_rate": {"type": "loguniform", "low": 1e-5, "high": 1e-3}}
    searcher = make_searcher(config)
    searcher.set_search_properties(None, None, tune_search_space(config.tune.search_space))
    for trial_id in "abcd":
        assert searcher.suggest(trial_id) is not None
    result = lambda epoch, f1, best, **extra: {"epoch": epoch, "planned_epochs": 3, "val_macro_f1": f1,
                                               "best_val_macro_f1": best, "training_iteration": 1, **extra}
    searcher.on_trial_result("a", result(1, 0.1, 0.1))
    searcher.on_trial_complete("a", result(2, 0.2, 0.2))  # stopped by ASHA at epoch 2: Tune passes that result only here
    searcher.on_trial_result("b", result(1, 0.3, 0.3))
    searcher.on_trial_result("b", result(2, 0.25, 0.3, stopped_by_patience=1))
    searcher.on_trial_complete("b", result(2, 0.25, 0.3, stopped_by_patience=1))
    for epoch, f1 in ((1, 0.4), (2, 0.6)):  # a Train run started again counts training_iteration from 1
        searcher.on_trial_result("c", result(epoch, f1, max(0.4, f1)))
    searcher.on_trial_complete("c", result(3, 0.5, 0.6))  # ASHA stops a trial at max_t: its last epoch comes only here
    searcher.on_trial_complete("d", None, error=True)

    trials = {t.user_attrs["ray_trial_id"]: t for t in searcher._ot_study.get_trials()}
    assert trials["a"].state == optuna.trial.TrialState.PRUNED and trials["a"].intermediate_values == {1: 0.1, 2: 0.2}
    assert trials["a"].value == pytest.approx(0.2)  # a pruned trial's value is its last epoch's
    assert trials["b"].state == optuna.trial.TrialState.COMPLETE and trials["b"].value == pytest.approx(0.3)
    assert trials["c"].state == optuna.trial.TrialState.COMPLETE and trials["c"].value == pytest.approx(0.6)
    assert trials["c"].intermediate_values == {1: 0.4, 2: 0.6, 3: 0.5}
    assert trials["d"].state == optuna.trial.TrialState.FAIL
    assert searcher._ot_study.best_trial.user_attrs["ray_trial_id"] == "c"


def test_the_best_checkpoint_is_the_best_score_ray_kept_and_the_later_of_equals(tmp_path):
    def checkpoint(name):
        (tmp_path / name).mkdir(exist_ok=True)
        return SimpleNamespace(path=str(tmp_path / name))

    kept = [(checkpoint("c1"), {"val_macro_f1": 0.5}), (checkpoint("c2"), {"val_macro_f1": 0.7}),
            (checkpoint("c3"), {"val_macro_f1": 0.7}), (SimpleNamespace(path=str(tmp_path / "gone")), {"val_macro_f1": 0.9})]
    chosen, score = best_checkpoint(SimpleNamespace(best_checkpoints=kept), "val_macro_f1", "max")
    assert chosen.path.endswith("c3") and score == 0.7
    chosen, score = best_checkpoint(SimpleNamespace(best_checkpoints=kept), "val_macro_f1", "min")
    assert chosen.path.endswith("c1")
    assert best_checkpoint(SimpleNamespace(best_checkpoints=[]), "val_macro_f1", "max") == (None, None)


def test_a_trial_s_max_length_keeps_what_the_tokenizer_would_keep(tiny_bert, real_papers):
    from arxivcls.features import tokenize_texts
    from arxivcls.models import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_bert))
    texts = (real_papers.title + " " + real_papers.summary).tolist()[:50]
    labels = np.arange(len(texts))
    long = TokenizedSplit.from_lists(tokenize_texts(tokenizer, texts, 64), labels)
    short = TokenizedSplit.from_lists(tokenize_texts(tokenizer, texts, 16), labels)
    cut = truncate_split(long, 16)
    assert np.array_equal(cut.ids, short.ids) and np.array_equal(cut.offsets, short.offsets)
    assert np.array_equal(cut.labels, labels) and truncate_split(short, 64) is short


def test_the_baseline_search_runs_beside_gpu_trials_and_after_cpu_trials(monkeypatch):
    import arxivcls.baseline_search
    from arxivcls.inputs import TrialInputs
    from arxivcls.tuning import baseline_beside_trials

    monkeypatch.setattr(arxivcls.baseline_search, "search_study_baseline", lambda prepared, config, log: ("searched", prepared))
    config = Config()
    inputs = SimpleNamespace(prepared="the prepared data")
    cpu_trial = TrialInputs(config.train)
    assert baseline_beside_trials(config, inputs, cpu_trial) is None  # the evaluation stage runs it
    gpu_trial = cpu_trial.with_train(gpus_per_worker=1.0)
    assert baseline_beside_trials(config, inputs, gpu_trial).result(timeout=10) == ("searched", "the prepared data")
    config.eval.baseline = False
    assert baseline_beside_trials(config, inputs, gpu_trial) is None
