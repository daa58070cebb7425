"""keras-tuner integration with keras-tuner's real Tuner machinery (no mocks): proposals,
DartsOracle + ArchitectureTuner (a trial == a train.train run), SavedModel export of the best
trial and resume, DartsOracle + GenotypeHyperModel under keras-tuner's plain Tuner,
SearchTuner with BayesianOptimization."""

import dataclasses
import itertools
import json
import os
import sys

import keras_tuner as kt
import numpy as np
import pytest
import tensorflow as tf

from tf_amended_darts import (  # the package's lazy exports
    ArchitectureTuner,
    DartsOracle,
    GenotypeHyperModel,
    data,
    errors,
    genotypes,
    proposals,
    run_dir,
    search,
    search_model,
    search_space,
    train,
    tuner,
)

OPS = ("none", "skip_connect", "avg_pool_3x3", "sep_conv_3x3")
# A tiny search on 8x8 digits: 3 cells, 1 node, C=4, first-order (fast to trace).
TINY = search.SearchConfig(
    cells=3,
    nodes=1,
    channels=4,
    batch_size=16,
    operations=OPS,
    epochs=1,
    steps_per_epoch=2,
    arch_gradient="first_order",
    validate=False,
)
# Each trial: a train.train run of 2 steps (auxiliary head, drop-path, clipping as default).
# validation_split: trials are scored on held-out training data (tuner's default).
TRAINING = dict(
    dataset="digits",
    channels=4,
    cells=3,
    epochs=1,
    steps_per_epoch=2,
    batch_size=16,
    cutout=0,
    validation_split=0.5,
)


def _quiet():
    return {
        "log_stream": open(os.devnull, "w"),
        "progress_stream": open(os.devnull, "w"),
        "render": False,
    }


@pytest.fixture(scope="module")
def search_dir(tmp_path_factory):
    """A finished tiny search, run by a DartsOracle itself (through search.search)."""
    directory = str(tmp_path_factory.mktemp("search"))
    oracle = DartsOracle(
        search_config=TINY, search_dir=directory, search_kwargs=_quiet(), max_trials=2
    )
    assert len(oracle.alphas) == 2
    return directory


def _random_alphas(space, seed=0):
    rng = np.random.default_rng(seed)
    return [
        rng.normal(size=(space.num_edges, len(space.operations)))
        for _ in range(space.num_normal_slots + space.num_reduce_slots)
    ]


# -- proposals (numpy only) --------------------------------------------------------------------


def test_proposals_enumerate_every_genotype_once_most_probable_first():
    space = search_space.SearchSpace(operations=OPS, nodes=2, cells=3)
    alphas = _random_alphas(space)
    ranked = list(proposals.propose_genotypes(space, alphas))
    # Per cell: node 2 keeps inputs {0, 1} (3 x 3 ops), node 3 two of three inputs (3 x 9).
    assert len(ranked) == (9 * 27) ** 2
    assert len({proposals.canonical_key(g) for g, _ in ranked}) == len(ranked)
    assert ranked[0][0] == search_model.derive_genotype(space, alphas)
    scores = [s for _, s in ranked]
    assert all(a >= b - 1e-12 for a, b in zip(scores, scores[1:]))
    for genotype, score in ranked[:50]:
        assert proposals.log_probability(space, alphas, genotype) == pytest.approx(score)
    # Deterministic.
    again = list(itertools.islice(proposals.propose_genotypes(space, alphas), 50))
    assert [g for g, _ in again] == [g for g, _ in ranked[:50]]


def test_second_proposal_changes_the_weakest_decision():
    space = search_space.SearchSpace(operations=OPS, nodes=1, cells=3)
    alphas = [np.zeros((2, 4)), np.zeros((2, 4))]
    alphas[0][0] = [0, 5, 0, 0]  # normal, input 0: skip_connect, certain
    alphas[0][1] = [0, 0, 1.0, 0.9]  # normal, input 1: avg_pool barely ahead of sep_conv
    alphas[1][:, 3] = 5  # reduce: sep_conv on both inputs, certain
    first, second = itertools.islice(proposals.propose_genotypes(space, alphas), 2)
    assert first[0].normal == [("skip_connect", 0), ("avg_pool_3x3", 1)]
    assert second[0].normal == [("skip_connect", 0), ("sep_conv_3x3", 1)]
    assert second[0].reduce == first[0].reduce


def test_large_spaces_propose_lazily():
    for name in ("darts", "enlarged"):
        space = search_space.get_search_space(name)
        ranked = list(
            itertools.islice(proposals.propose_genotypes(space, _random_alphas(space)), 30)
        )
        assert len({proposals.canonical_key(g) for g, _ in ranked}) == 30


def test_hyperparameter_values_round_trip():
    for genotype in (genotypes.PUBLISHED["DARTS_V2"],):
        space = search_space.get_search_space("darts")
        values = tuner.genotype_values(genotype, space)
        assert values["normal_0.node2.edge0.op"] == "sep_conv_3x3"
        assert values["reduce_0.node5.edge1.input"] == 1
        assert tuner.genotype_from_values(values) == genotype
    with pytest.raises(genotypes.GenotypeError, match="use DartsOracle"):
        tuner.genotype_from_values({"channels": 4})


def test_invalid_search_result_fails_with_one_clear_error():
    space = search_space.SearchSpace(operations=OPS, nodes=1, cells=3)
    with pytest.raises(
        ValueError,
        match=r"needs 2 alpha arrays of shape \(2, 4\), got "
        r"\[\(2, 4\), \(3, 4\)\]",
    ):
        DartsOracle([np.zeros((2, 4)), np.zeros((3, 4))], space)
    with pytest.raises(ValueError, match="needs 2 alpha arrays"):
        DartsOracle([np.zeros((2, 4))], space)
    with pytest.raises(ValueError, match="NaN"):
        DartsOracle([np.zeros((2, 4)), np.full((2, 4), np.nan)], space)
    # S1's per-edge candidates do not fit one Choice of operations per edge.
    s1 = search_space.get_search_space("s1")
    with pytest.raises(ValueError, match="same operations on every edge"):
        DartsOracle([np.zeros((14, 6))] * 2, s1)


# -- DartsOracle + ArchitectureTuner: trials are train.train runs -----------------------------


def _architecture_tuner(directory, oracle, training=TRAINING, **kwargs):
    return ArchitectureTuner(oracle, training, directory=directory, project_name="p", **kwargs)


def _weights(net):
    return [w.numpy() for w in net.weights]


def test_trials_are_train_runs_best_exports_and_resumes(search_dir, tmp_path):
    first = _architecture_tuner(str(tmp_path), DartsOracle(search_dir=search_dir, max_trials=2))
    first.search(verbose=0)
    trials = list(first.oracle.trials.values())
    assert len(trials) == 2 and all(t.status == "COMPLETED" for t in trials)
    found = [tuner.genotype_from_values(t.hyperparameters) for t in trials]
    assert len({proposals.canonical_key(g) for g in found}) == 2
    # The first trial is the search's derived genotype.
    derived = genotypes.load_genotype(os.path.join(search_dir, "genotype.json"))
    assert proposals.canonical_key(found[0]) == proposals.canonical_key(derived)
    # The hyperparameters show the choices and the training options.
    best = first.get_best_hyperparameters()[0]
    assert {
        "normal_0.node2.edge0.op",
        "reduce_0.node2.edge1.input",
        "train.channels",
        "train.cells",
        "train.epochs",
        "train.cutout",
    } <= set(best.values)

    # A trial is the re-training protocol: the best trial's run equals a train.train run of
    # the same TrainConfig (coupled L2, cosine schedule, clipping, auxiliary head, drop-path)
    # bit for bit: same final weights, same validation metrics, reported as its score.
    trial = first.oracle.get_best_trials(1)[0]
    genotype = tuner.genotype_from_values(trial.hyperparameters)
    config = train.TrainConfig(genotype=genotype, **TRAINING)
    with open(os.devnull, "w") as quiet:
        reference = train.train(
            config, str(tmp_path / "reference"), log_stream=quiet, progress_stream=quiet
        )
    trial_dir = os.path.join(first.get_trial_dir(trial.trial_id), tuner.TRAIN_DIR)
    assert run_dir.read_metadata(trial_dir)["config"] == config.to_dict()
    assert trial.metrics.get_last_value("val_accuracy") == reference.valid["valid_acc"]
    assert trial.metrics.get_last_value("val_loss") == reference.valid["valid_loss"]
    trained = first.get_best_models(1)[0]  # ArchitectureTuner.load_model: the trial's run
    for got, want in zip(
        _weights(trained), _weights(train.restore_network(str(tmp_path / "reference"))[2])
    ):
        np.testing.assert_array_equal(got, want)

    # The best trial converts back to a genotype.json and its TrainConfig.
    path = str(tmp_path / "best_genotype.json")
    best_trial, best_config = tuner.write_best_genotype(first, path)
    assert best_trial.trial_id == trial.trial_id and best_config == config
    assert genotypes.load_genotype(path) == genotype
    _check_export(first, trained, genotype, str(tmp_path / "model"))
    # State is JSON with the alphas and the proposals.
    with open(os.path.join(str(tmp_path), "p", "oracle.json")) as f:
        state = json.load(f)["darts"]
    assert len(state["proposals"]) == 2
    assert np.array(state["alphas"]).shape == (2, 2, 4)

    # A tuner re-created on the same directory resumes: 1 more trial, no repeats.
    resumed = _architecture_tuner(str(tmp_path), DartsOracle(search_dir=search_dir, max_trials=3))
    assert len(resumed.oracle.trials) == 2
    resumed.search(verbose=0)
    trials = list(resumed.oracle.trials.values())
    assert len(trials) == 3 and all(t.status == "COMPLETED" for t in trials)
    keys = [proposals.canonical_key(tuner.genotype_from_values(t.hyperparameters)) for t in trials]
    assert len(set(keys)) == 3
    # Another search result or other training options on the same project are refused.
    space = search_space.SearchSpace.from_dict(state["search_space"])
    with pytest.raises(errors.InputError, match="another search result"):
        _architecture_tuner(str(tmp_path), DartsOracle(_random_alphas(space), space))
    with pytest.raises(
        errors.InputError,
        match=r"other training options \(differ in: "
        r"epochs\)",
    ):
        _architecture_tuner(
            str(tmp_path), DartsOracle(search_dir=search_dir), dict(TRAINING, epochs=2)
        )


def test_plain_keras_tuner_with_genotype_hypermodel(search_dir, tmp_path):
    """keras_tuner.Tuner(oracle=DartsOracle, hypermodel=GenotypeHyperModel) runs a search whose
    trials are train.train runs: their scores are those runs' results, the best hyperparameters
    are a genotype, get_best_models gives the trained network."""
    hypermodel = GenotypeHyperModel(TRAINING, str(tmp_path / "runs"))
    plain = kt.Tuner(
        oracle=DartsOracle(search_dir=search_dir, max_trials=2),
        hypermodel=hypermodel,
        directory=str(tmp_path),
        project_name="plain",
    )
    plain.search(verbose=0)
    trials = list(plain.oracle.trials.values())
    assert len(trials) == 2 and all(t.status == "COMPLETED" for t in trials)
    found = [tuner.genotype_from_values(t.hyperparameters) for t in trials]
    assert len({proposals.canonical_key(g) for g in found}) == 2
    for t in trials:
        assert 0 <= t.metrics.get_last_value("val_accuracy") <= 1
        assert np.isfinite(t.metrics.get_last_value("val_loss"))

    best = plain.get_best_hyperparameters()[0]
    genotype = tuner.genotype_from_values(best)
    assert genotype in found
    assert best.values["train.epochs"] == TRAINING["epochs"]
    config = train.TrainConfig(genotype=genotype, **TRAINING)
    assert hypermodel.trial_config(best).to_dict() == config.to_dict()
    run = hypermodel.run_dir(best)
    assert run_dir.read_metadata(run)["config"] == config.to_dict()
    # The best score is the train.train result of its TrainConfig, bit for bit.
    with open(os.devnull, "w") as quiet:
        reference = train.train(
            config, str(tmp_path / "reference"), log_stream=quiet, progress_stream=quiet
        )
    best_trial = plain.oracle.get_best_trials(1)[0]
    assert best_trial.metrics.get_last_value("val_accuracy") == reference.valid["valid_acc"]
    # keras-tuner's checkpoint of the trial holds the trained weights.
    info = data.load_dataset("digits").info
    images = data.normalize(np.load(data.DIGITS_PATH)["test_images"][:5], info.mean, info.std)
    restored = train.restore_network(run)[2]
    np.testing.assert_allclose(
        plain.get_best_models(1)[0](images, training=False).numpy(),
        restored(images, training=False).numpy(),
        rtol=1e-6,
        atol=1e-6,
    )
    with pytest.raises(errors.InputError, match="without data"):
        hypermodel.fit(best, plain.get_best_models(1)[0], np.zeros(1))


def _check_export(best_tuner, trained, genotype, export_dir):
    """The best trial's SavedModel serves what its trained network predicts: probabilities
    within 1e-5 relative / 1e-6 absolute, same classes."""
    trial, description = tuner.export_best_trial(best_tuner, export_dir)
    assert trial.trial_id == best_tuner.oracle.get_best_trials(1)[0].trial_id
    assert (description["cells"], description["channels"]) == (3, 4)
    images = np.load(data.DIGITS_PATH)["test_images"][:5]
    info = data.load_dataset("digits").info
    expected = tf.nn.softmax(
        trained(data.normalize(images, info.mean, info.std), training=False)
    ).numpy()
    loaded = tf.saved_model.load(export_dir)
    served = loaded.signatures["serving_default"](images=tf.constant(images))
    np.testing.assert_allclose(served["probabilities"].numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(served["top_class"].numpy(), expected.argmax(-1))
    assert genotypes.Genotype.from_json(loaded.metadata()["genotype"].numpy().decode()) == genotype
    with pytest.raises(errors.InputError, match="already exists"):
        tuner.export_best_trial(best_tuner, export_dir)


def test_bad_training_options_fail_with_one_clear_error():
    for options, message in (
        ({"epoch": 1}, r"unknown training options \['epoch'\]"),
        ({"genotype": "DARTS_V2"}, "unknown training options"),
        ({"drop_path": 1.5}, r"drop_path must be in \[0, 1\)"),
        ({"cells": 2}, "cells must be at least 3"),
    ):
        with pytest.raises(errors.InputError, match=message):
            tuner.check_train_options(options)
    # Nones dropped; trials validate on held-out training data unless told otherwise.
    assert tuner.check_train_options({"epochs": 2, "data_dir": None}) == {
        "epochs": 2,
        "validation_split": 0.5,
    }
    assert tuner.check_train_options({"validation_split": 0.2})["validation_split"] == 0.2


def test_oracle_stops_when_proposals_are_exhausted(tmp_path):
    space = search_space.SearchSpace(
        operations=("none", "skip_connect", "avg_pool_3x3"),
        nodes=1,
        inputs_per_node=1,
        cells=3,
        channels=4,
    )
    oracle = DartsOracle(_random_alphas(space), space, max_trials=100)
    oracle._set_project_dir(str(tmp_path), "p")  # what a Tuner does
    seen = set()
    while True:
        trial = oracle.create_trial("tuner0")
        if trial.status == "STOPPED":
            break
        seen.add(proposals.canonical_key(tuner.genotype_from_values(trial.hyperparameters)))
        oracle.update_trial(trial.trial_id, {"val_accuracy": 0.5})
        trial.status = "COMPLETED"
        oracle.end_trial(trial)
    # One input (of 2) with one op (of 2) per cell: 4 x 4 architectures, each once.
    assert len(seen) == len(oracle.trials) == len(oracle.proposals) == 16
    limited = DartsOracle(_random_alphas(space), space, max_trials=100, max_proposals=2)
    limited._set_project_dir(str(tmp_path), "q")
    statuses = [limited.create_trial(f"t{i}").status for i in range(3)]
    assert statuses == ["RUNNING", "RUNNING", "STOPPED"]


def test_oracle_runs_the_search_itself(search_dir):
    assert os.path.exists(os.path.join(search_dir, "genotype.json"))
    space, alphas = tuner.load_search_result(search_dir, TINY)
    assert space == TINY.space()
    assert tuner.load_search_result(search_dir, dataclasses.replace(TINY, seed=1)) is None
    derived = search_model.derive_genotype(space, alphas)
    assert derived == genotypes.load_genotype(os.path.join(search_dir, "genotype.json"))


# -- tuning the search itself ------------------------------------------------------------------


def test_search_tuner_with_bayesian_optimization(tmp_path):
    hp = kt.HyperParameters()
    hp.Fixed("arch_gradient", "first_order")  # keep the trials fast
    # One random trial, then one proposed by the Gaussian process.
    oracle = kt.oracles.BayesianOptimizationOracle(
        objective=kt.Objective("val_accuracy", "max"),
        max_trials=2,
        num_initial_points=1,
        hyperparameters=hp,
        seed=1,
    )
    base = TINY
    search_tuner = tuner.SearchTuner(
        oracle, base, TRAINING, directory=str(tmp_path), project_name="s"
    )
    search_tuner.search(verbose=0)
    trials = list(oracle.trials.values())
    assert len(trials) == 2 and all(t.status == "COMPLETED" for t in trials)
    assert {"arch_learning_rate", "amending_coefficient", "warmup_epochs"} <= set(
        trials[0].hyperparameters.values
    )
    assert trials[0].hyperparameters.values != trials[1].hyperparameters.values
    config = tuner.best_search_config(search_tuner, base)
    assert config.arch_gradient == "first_order"
    assert config.arch_learning_rate == search_tuner.get_best_hyperparameters()[0].get(
        "arch_learning_rate"
    )
    # Each trial trained its search's genotype with train.train and reports that run's
    # validation accuracy.
    for t in trials:
        trial_dir = os.path.join(str(tmp_path), "s", f"trial_{t.trial_id}")
        searched = genotypes.load_genotype(os.path.join(trial_dir, "search", "genotype.json"))
        run = run_dir.read_metadata(os.path.join(trial_dir, tuner.TRAIN_DIR))
        assert run["config"] == train.TrainConfig(genotype=searched, **TRAINING).to_dict()
        assert 0 <= t.metrics.get_last_value("val_accuracy") <= 1


def test_auto_amending_coefficient_cannot_be_tuned():
    hp = kt.HyperParameters()
    config = search.SearchConfig(amending_coefficient="auto")
    with pytest.raises(errors.InputError, match="auto chooses eta at every step"):
        tuner.declare_search_hyperparameters(hp, config)
    # Without it in the list the other hyperparameters are declared as usual.
    tuner.declare_search_hyperparameters(hp, config, names=("arch_learning_rate",))
    assert "arch_learning_rate" in hp.values


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
