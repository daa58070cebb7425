"""The diagnose binary, run as a user runs it, on a tiny preset supernet and on the checkpoint
of a tiny search (search.restore_search_network); refusals (the traces of the estimators
dominate: ~1-2 min each for the two JSON runs on 2 cores)."""

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tf_amended_darts import checkpointing, diagnostics, search

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The cheapest supernet with weights in every edge's candidates: 3 cells, 1 node, C=2.
TINY_SEARCH = dict(
    cells=3,
    nodes=1,
    channels=2,
    batch_size=8,
    epochs=1,
    steps_per_epoch=2,
    operations=("none", "skip_connect", "avg_pool_3x3", "conv_1x1"),
    arch_gradient="first_order",
    arch_learning_rate=0.1,
    validate=False,
)
FAST = [
    "--batch_size=8",
    "--estimators=first_order",
    "--implicit_iterations=1",
    "--repeats=1",
    "--format=json",
]


def diagnose(*flags):
    env = dict(
        os.environ,
        PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    return subprocess.run(
        [sys.executable, "-m", "tf_amended_darts.bin.diagnose", *flags],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """(directory, SearchResult) of a 2-step search."""
    directory = str(tmp_path_factory.mktemp("diagnose") / "search")
    with open(os.devnull, "w") as quiet:
        result = search.search(
            search.SearchConfig(**TINY_SEARCH),
            directory,
            render=False,
            log_stream=quiet,
            progress_stream=quiet,
        )
    return directory, result


def test_json_on_a_tiny_supernet():
    out = diagnose("--cells=3", "--channels=2", "--nodes=1", "--warmup_steps=1", *FAST)
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)  # one JSON object
    assert set(d["estimators"]) == {"implicit", "first_order"}
    assert d["cosine"]["implicit"]["implicit"] == pytest.approx(1.0, abs=1e-6)
    assert d["estimators"]["implicit"]["cosine_to_implicit"] == pytest.approx(1.0, abs=1e-6)
    assert d["estimators"]["first_order"]["correction_norm"] == 0.0
    for r in d["estimators"].values():
        for key in (
            "g1_norm",
            "correction_norm",
            "total_norm",
            "seconds_per_call",
            "first_call_seconds",
            "cosine_to_implicit",
        ):
            assert math.isfinite(r[key]), (key, r)
    assert d["config"]["weights"] == "fresh supernet after 1 SGD steps"
    assert len(d["warmup_losses"]) == 1


def test_restore_search_network(searched):
    directory, result = searched
    run = search.restore_search_network(directory)
    assert run.config == search.SearchConfig(**TINY_SEARCH)
    assert (run.global_step, os.path.basename(run.checkpoint)) == (2, "ckpt-2")
    for restored, searched_alphas in zip(run.network.arch_variables, result.alphas):
        np.testing.assert_array_equal(restored.numpy(), searched_alphas)
    # Every variable (BatchNorm moving statistics included) holds the checkpoint's value.
    reader = tf.train.load_checkpoint(run.checkpoint)
    variables = checkpointing.named_variables(run.network)
    for name, variable in variables.items():  # tf.train.Checkpoint escapes "." as ".."
        key = f"network/{name.replace('.', '..')}/.ATTRIBUTES/VARIABLE_VALUE"
        np.testing.assert_array_equal(variable.numpy(), reader.get_tensor(key))
    assert any(np.any(v.numpy() != 0) for n, v in variables.items() if "moving_mean" in n)
    assert any(np.any(m.numpy() != 0) for m in run.weight_optimizer.momentums)


def test_binary_on_a_search_checkpoint(searched):
    directory, result = searched
    out = diagnose(f"--search_dir={directory}", *FAST)
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    # The numbers are the restored supernet's: its alphas, to the bit, and the run's data.
    for alphas, searched_alphas in zip(d["alphas"], result.alphas):
        np.testing.assert_array_equal(np.array(alphas, np.float32), searched_alphas)
    assert not np.allclose(np.array(d["alphas"][0]), 0, atol=1e-2)  # they did move
    c = d["config"]
    assert (c["global_step"], c["dataset"], c["warmup_steps"]) == (2, "digits", 0)
    assert c["space"]["operations"] == list(TINY_SEARCH["operations"])
    assert c["checkpoint"].endswith("ckpt-2") and d["warmup_losses"] == []
    assert all(math.isfinite(r["cosine_to_implicit"]) for r in d["estimators"].values())


def test_traced_functions_are_kept_and_read_the_current_values(searched):
    """diagnose(traced=...) measures a changed supernet again without tracing (the study's
    cosines every few epochs), with the numbers of a fresh measurement: alphas, weights and
    the weight optimizer's learning rate are read at each call, not frozen at the first."""
    run = search.restore_search_network(searched[0])

    def measure(traced):
        config = diagnostics.DiagnoseConfig(
            batch_size=8,
            estimators=("first_order", "second_order"),
            implicit_iterations=2,
            repeats=1,
        )
        return diagnostics.diagnose(config, search_run=run, traced=traced)

    traced = {}
    before = measure(traced)
    functions = [f for k, f in traced.items() if k != "model"]
    # implicit, first order, second order
    assert len(functions) == 3
    for variable in run.network.arch_variables + run.network.weight_variables[:3]:
        variable.assign(variable * 1.5 + 0.1)
    run.weight_optimizer.learning_rate.assign(0.5)
    again, fresh = measure(traced), measure(None)
    assert [traced[k] for k in traced if k != "model"] == functions
    assert all(f.experimental_get_tracing_count() == 1 for f in functions)
    for name, values in fresh["estimators"].items():
        for key in ("g1_norm", "correction_norm", "total_norm", "cosine_to_implicit"):
            # Same functions of the same values: float32 rounding of one computation order.
            assert again["estimators"][name][key] == pytest.approx(values[key], rel=1e-5), key
    # ... and not the first measurement's (the change reached every estimator).
    for name in ("first_order", "second_order", "implicit"):
        assert again["estimators"][name]["total_norm"] != pytest.approx(
            before["estimators"][name]["total_norm"], rel=1e-3
        ), name


def _corrupt_copy(directory, target):
    shutil.copytree(directory, target)
    for name in os.listdir(os.path.join(target, "checkpoints")):
        if name.startswith("ckpt-2.data"):
            with open(os.path.join(target, "checkpoints", name), "r+b") as f:
                f.truncate(100)
    return target


@pytest.mark.parametrize("case", ["estimators", "no_estimators", "missing", "corrupt", "cells"])
def test_bad_input_is_one_line_and_exit_2(case, searched, tmp_path):
    directory = searched[0]
    flags, message = {
        "estimators": (["--estimators=third_order"], "unknown estimator 'third_order'"),
        "no_estimators": (["--estimators=,"], "estimators is empty"),
        "missing": ([f"--search_dir={tmp_path}/none"], "holds no search run"),
        "corrupt": (
            [f"--search_dir={_corrupt_copy(directory, str(tmp_path / 'c'))}"],
            "ckpt-2 does not fit the supernet",
        ),
        "cells": ([f"--search_dir={directory}", "--cells=5"], "drop cells"),
    }[case]
    out = diagnose(*flags)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("diagnose: error: ") and message in lines[0], lines[0]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
