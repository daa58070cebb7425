"""keras-tuner integration with keras-tuner's real Tuner machinery (no mocks): proposals,
DartsOracle + GenotypeHyperModel search, SavedModel export of the best trial and resume,
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

from tf_amended_darts import DartsOracle, GenotypeHyperModel  # the package's lazy exports
from tf_amended_darts import genotypes, model, search, search_model, search_space, tuner

OPS = ("none", "skip_connect", "avg_pool_3x3", "sep_conv_3x3")
# A tiny search on 8x8 digits: 3 cells, 1 node, C=4, first-order (fast to trace).
TINY = search.SearchConfig(cells=3, nodes=1, channels=4, batch_size=16, operations=OPS,
                           epochs=1, steps_per_epoch=2, arch_gradient="first_order",
                           validate=False)
HYPERMODEL = dict(num_classes=10, channels=4, layers=3, epochs=1, batch_size=16)


def _quiet():
    return {"log_stream": open(os.devnull, "w"), "progress_stream": open(os.devnull, "w"),
            "render": False}


@pytest.fixture(scope="module")
def search_dir(tmp_path_factory):
    """A finished tiny search, run by a DartsOracle itself (through search.search)."""
    directory = str(tmp_path_factory.mktemp("search"))
    oracle = DartsOracle(search_config=TINY, search_dir=directory, search_kwargs=_quiet(),
                         max_trials=2)
    assert len(oracle.alphas) == 2
    return directory


@pytest.fixture(scope="module")
def fit_data():
    train, validation, _ = tuner.fit_datasets("digits", 16, steps_per_epoch=2,
                                              validation_steps=4)
    return train, validation


def _random_alphas(space, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(space.num_edges, len(space.operations)))
            for _ in range(space.num_normal_slots + space.num_reduce_slots)]


# -- proposals (numpy only) --------------------------------------------------------------------

def test_proposals_enumerate_every_genotype_once_most_probable_first():
    space = search_space.SearchSpace(operations=OPS, steps=2, layers=3)
    alphas = _random_alphas(space)
    proposals = list(tuner.propose_genotypes(space, alphas))
    # Per cell: node 2 keeps inputs {0, 1} (3 x 3 ops), node 3 two of three inputs (3 x 9).
    assert len(proposals) == (9 * 27) ** 2
    assert len({tuner.canonical_key(g) for g, _ in proposals}) == len(proposals)
    assert proposals[0][0] == search_model.derive_genotype(space, alphas)
    scores = [s for _, s in proposals]
    assert all(a >= b - 1e-12 for a, b in zip(scores, scores[1:]))
    for genotype, score in proposals[:50]:
        assert tuner.log_probability(space, alphas, genotype) == pytest.approx(score)
    # Deterministic.
    again = list(itertools.islice(tuner.propose_genotypes(space, alphas), 50))
    assert [g for g, _ in again] == [g for g, _ in proposals[:50]]


def test_second_proposal_changes_the_weakest_decision():
    space = search_space.SearchSpace(operations=OPS, steps=1, layers=3)
    alphas = [np.zeros((2, 4)), np.zeros((2, 4))]
    alphas[0][0] = [0, 5, 0, 0]      # normal, input 0: skip_connect, certain
    alphas[0][1] = [0, 0, 1.0, 0.9]  # normal, input 1: avg_pool barely ahead of sep_conv
    alphas[1][:, 3] = 5              # reduce: sep_conv on both inputs, certain
    first, second = itertools.islice(tuner.propose_genotypes(space, alphas), 2)
    assert first[0].normal == [("skip_connect", 0), ("avg_pool_3x3", 1)]
    assert second[0].normal == [("skip_connect", 0), ("sep_conv_3x3", 1)]
    assert second[0].reduce == first[0].reduce


def test_large_spaces_propose_lazily():
    for name in ("darts", "enlarged"):
        space = search_space.get_search_space(name)
        proposals = list(itertools.islice(
            tuner.propose_genotypes(space, _random_alphas(space)), 30))
        assert len({tuner.canonical_key(g) for g, _ in proposals}) == 30


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
    space = search_space.SearchSpace(operations=OPS, steps=1, layers=3)
    with pytest.raises(ValueError, match=r"needs 2 alpha arrays of shape \(2, 4\), got "
                                         r"\[\(2, 4\), \(3, 4\)\]"):
        DartsOracle([np.zeros((2, 4)), np.zeros((3, 4))], space)
    with pytest.raises(ValueError, match="needs 2 alpha arrays"):
        DartsOracle([np.zeros((2, 4))], space)
    with pytest.raises(ValueError, match="NaN"):
        DartsOracle([np.zeros((2, 4)), np.full((2, 4), np.nan)], space)


# -- DartsOracle + GenotypeHyperModel with keras-tuner's Tuner ---------------------------------

def _tuner(directory, oracle, **kwargs):
    return kt.Tuner(oracle=oracle, hypermodel=GenotypeHyperModel(**HYPERMODEL),
                    directory=directory, project_name="p", **kwargs)


def test_tuner_search_distinct_trials_best_builds_and_resumes(search_dir, fit_data, tmp_path):
    train, validation = fit_data
    oracle = DartsOracle(search_dir=search_dir, max_trials=3)
    first = _tuner(str(tmp_path), oracle)
    first.search(train, validation_data=validation, verbose=0)
    trials = list(first.oracle.trials.values())
    assert len(trials) == 3 and all(t.status == "COMPLETED" for t in trials)
    found = [tuner.genotype_from_values(t.hyperparameters) for t in trials]
    assert len({tuner.canonical_key(g) for g in found}) == 3
    # The first trial is the search's derived genotype.
    derived = genotypes.load_genotype(os.path.join(search_dir, "genotype.json"))
    assert tuner.canonical_key(found[0]) == tuner.canonical_key(derived)
    # The hyperparameters show the choices and the network/training settings.
    best = first.get_best_hyperparameters()[0]
    assert {"normal_0.node2.edge0.op", "reduce_0.node2.edge1.input", "channels", "layers",
            "learning_rate", "epochs"} <= set(best.values)
    # The best trial converts back to a genotype.json that builds.
    path = str(tmp_path / "best_genotype.json")
    trial, genotype, config = tuner.write_best_genotype(first, path)
    assert genotypes.load_genotype(path) == genotype
    assert config == {"init_channels": 4, "layers_count": 3, "num_classes": 10,
                      "auxiliary": False}
    net = model.NetworkCIFAR(genotype, **config)
    assert net(tf.zeros((2, 8, 8, 1))).shape == (2, 10)
    _check_export(first, genotype, str(tmp_path / "model"))
    # State is JSON with the alphas and the proposals.
    with open(os.path.join(str(tmp_path), "p", "oracle.json")) as f:
        state = json.load(f)["darts"]
    assert len(state["proposals"]) == 3
    assert np.array(state["alphas"]).shape == (2, 2, 4)

    # A tuner re-created on the same directory resumes: 2 more trials, no repeats.
    resumed = _tuner(str(tmp_path), DartsOracle(search_dir=search_dir, max_trials=5))
    assert len(resumed.oracle.trials) == 3
    resumed.search(train, validation_data=validation, verbose=0)
    trials = list(resumed.oracle.trials.values())
    assert len(trials) == 5
    keys = [tuner.canonical_key(tuner.genotype_from_values(t.hyperparameters)) for t in trials]
    assert len(set(keys)) == 5
    # Another search result on the same project is refused.
    space = search_space.SearchSpace.from_dict(state["search_space"])
    with pytest.raises(ValueError, match="another search result"):
        _tuner(str(tmp_path), DartsOracle(_random_alphas(space), space, max_trials=5))


def _check_export(best_tuner, genotype, export_dir):
    """The best trial's SavedModel serves what keras-tuner's best model (the best epoch's
    checkpoint) predicts: probabilities within 1e-5 relative / 1e-6 absolute, same classes."""
    trial, description = tuner.export_best_trial(best_tuner, export_dir, "digits")
    assert trial.trial_id == best_tuner.oracle.get_best_trials(1)[0].trial_id
    assert (description["cells"], description["channels"]) == (3, 4)
    net = best_tuner.get_best_models(1)[0]
    images = np.load(os.path.join(os.path.dirname(tuner.__file__), "datasets",
                                  "digits.npz"))["test_images"][:5]
    info = tuner.data.load_dataset("digits").info
    expected = tf.nn.softmax(net(tuner.data.normalize(images, info.mean, info.std),
                                 training=False)).numpy()
    loaded = tf.saved_model.load(export_dir)
    served = loaded.signatures["serving_default"](images=tf.constant(images))
    np.testing.assert_allclose(served["probabilities"].numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(served["top_class"].numpy(), expected.argmax(-1))
    assert genotypes.Genotype.from_json(
        loaded.metadata()["genotype"].numpy().decode()) == genotype
    with pytest.raises(ValueError, match="already exists"):
        tuner.export_best_trial(best_tuner, export_dir, "digits")


def test_oracle_stops_when_proposals_are_exhausted(tmp_path):
    space = search_space.SearchSpace(operations=("none", "skip_connect", "avg_pool_3x3"),
                                     steps=1, inputs_per_node=1, layers=3, init_channels=4)
    oracle = DartsOracle(_random_alphas(space), space, max_trials=100)
    oracle._set_project_dir(str(tmp_path), "p")  # what a Tuner does
    seen = set()
    while True:
        trial = oracle.create_trial("tuner0")
        if trial.status == "STOPPED":
            break
        seen.add(tuner.canonical_key(tuner.genotype_from_values(trial.hyperparameters)))
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
        objective=kt.Objective("val_accuracy", "max"), max_trials=2, num_initial_points=1,
        hyperparameters=hp, seed=1)
    base = TINY
    search_tuner = tuner.SearchTuner(oracle, base, eval_channels=4, eval_layers=3,
                                     eval_epochs=1, eval_steps_per_epoch=2, eval_validation_steps=4,
                                     directory=str(tmp_path), project_name="s")
    search_tuner.search(verbose=0)
    trials = list(oracle.trials.values())
    assert len(trials) == 2 and all(t.status == "COMPLETED" for t in trials)
    assert {"arch_learning_rate", "amending_coefficient", "warmup_epochs"} <= set(
        trials[0].hyperparameters.values)
    assert trials[0].hyperparameters.values != trials[1].hyperparameters.values
    assert all(0 <= t.metrics.get_last_value("val_accuracy") <= 1 for t in trials)
    config = tuner.best_search_config(search_tuner, base)
    assert config.arch_gradient == "first_order"
    assert config.arch_learning_rate == search_tuner.get_best_hyperparameters()[0].get(
        "arch_learning_rate")
    for t in trials:
        assert os.path.exists(os.path.join(str(tmp_path), "s", f"trial_{t.trial_id}",
                                           "search", "genotype.json"))


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
