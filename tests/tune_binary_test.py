"""The tune binary end to end: architectures from a finished search (each trial the train
binary's protocol; the best trial's SavedModel), the search's options with BayesianOptimization,
keras-tuner's distributed tuning (a chief and one worker on localhost), and bad flags (exit 2,
one clear line)."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tf_amended_darts import data, genotypes, search, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPS = ("none", "skip_connect", "avg_pool_3x3", "sep_conv_3x3")
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
SEARCH_FLAGS = [
    "--cells=3",
    "--nodes=1",
    "--channels=4",
    "--batch_size=16",
    "--epochs=1",
    "--steps_per_epoch=2",
    "--arch_gradient=first_order",
    "--validate=false",
    f"--operations={','.join(OPS)}",
]
EVAL_FLAGS = [
    "--eval_channels=4",
    "--eval_cells=3",
    "--eval_epochs=1",
    "--eval_steps_per_epoch=2",
    "--eval_batch_size=16",
]
# The TrainConfig those flags mean: the train binary's protocol (coupled L2 3e-4, cosine
# schedule from 0.025, clipping at 5, auxiliary head, drop-path 0.2; no cutout by default).
TRAINING = dict(
    dataset="digits",
    channels=4,
    cells=3,
    epochs=1,
    steps_per_epoch=2,
    batch_size=16,
    learning_rate=0.025,
    momentum=0.9,
    weight_decay=3e-4,
    grad_clip=5.0,
    auxiliary=True,
    drop_path=0.2,
    cutout=0,
    seed=0,
    validation_split=0.5,  # scored on held-out training data, never on the test split
)


@pytest.fixture(scope="module")
def search_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("search"))
    with open(os.devnull, "w") as quiet:
        search.search(TINY, directory, render=False, log_stream=quiet, progress_stream=quiet)
    return directory


def _command(*args):
    return [sys.executable, "-m", "tf_amended_darts.bin.tune", *SEARCH_FLAGS, *EVAL_FLAGS, *args]


def _env(**extra):
    return dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2", **extra)


def _tune(*args):
    return subprocess.run(
        _command(*args), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600
    )


def _trials(project):
    found = []
    for name in sorted(os.listdir(project)):
        if name.startswith("trial_"):
            with open(os.path.join(project, name, "trial.json")) as f:
                found.append(json.load(f))
    return found


def test_architectures_end_to_end(search_dir, tmp_path):
    export_dir = str(tmp_path / "model")
    run = _tune(
        f"--search_dir={search_dir}",
        f"--directory={tmp_path}",
        "--max_trials=2",
        f"--export_dir={export_dir}",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "best trial" in run.stdout and f"to {export_dir}" in run.stdout
    path = tmp_path / "tune" / "best_genotype.json"
    genotype = genotypes.load_genotype(str(path))
    trials = _trials(str(tmp_path / "tune"))
    assert [t["status"] for t in trials] == ["COMPLETED"] * 2
    assert trials[0]["hyperparameters"]["values"] != trials[1]["hyperparameters"]["values"]
    best = max(trials, key=lambda t: t["score"])
    # The best trial is the train binary's protocol: a train.train run of the TrainConfig the
    # flags mean has the trial's score, and its network is what the SavedModel serves.
    with open(os.devnull, "w") as quiet:
        reference = train.train(
            train.TrainConfig(genotype=genotype, **TRAINING),
            str(tmp_path / "reference"),
            log_stream=quiet,
            progress_stream=quiet,
        )
    assert best["score"] == pytest.approx(reference.valid["valid_acc"], abs=1e-6)
    images = np.load(data.DIGITS_PATH)["test_images"][:8]
    info = data.load_dataset("digits").info
    expected = tf.nn.softmax(
        reference.model(data.normalize(images, info.mean, info.std), training=False)
    ).numpy()
    loaded = tf.saved_model.load(export_dir)
    served = loaded.signatures["serving_default"](images=tf.constant(images))
    np.testing.assert_allclose(served["probabilities"].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert genotypes.Genotype.from_json(loaded.metadata()["genotype"].numpy().decode()) == genotype


def test_search_options_with_bayesian_optimization(tmp_path):
    run = _tune(
        "--mode=search_options",
        "--oracle=bayesian",
        "--max_trials=1",
        "--initial_points=1",
        "--tune=arch_learning_rate,amending_coefficient",
        f"--directory={tmp_path}",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "best trial" in run.stdout and "arch_learning_rate=" in run.stdout
    with open(tmp_path / "tune" / "best_search_config.json") as f:
        best = json.load(f)
    assert best["arch_gradient"] == "first_order" and 1e-4 <= best["arch_learning_rate"] <= 1e-2
    assert [t["status"] for t in _trials(str(tmp_path / "tune"))] == ["COMPLETED"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_distributed_chief_and_worker(search_dir, tmp_path):
    oracle = dict(KERASTUNER_ORACLE_IP="127.0.0.1", KERASTUNER_ORACLE_PORT=str(_free_port()))
    args = (f"--search_dir={search_dir}", f"--directory={tmp_path}", "--max_trials=3")
    chief = subprocess.Popen(
        _command(*args),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(KERASTUNER_TUNER_ID="chief", **oracle),
    )
    worker = subprocess.Popen(
        _command(*args),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(KERASTUNER_TUNER_ID="tuner0", **oracle),
    )
    try:
        worker_out, worker_err = worker.communicate(timeout=600)
        chief_out, chief_err = chief.communicate(timeout=120)
    finally:
        for process in (chief, worker):
            if process.poll() is None:
                process.kill()
    assert worker.returncode == 0, worker_err[-3000:]
    assert "worker finished" in worker_out
    assert chief.returncode == 0, chief_err[-3000:]
    assert "best trial" in chief_out
    trials = _trials(str(tmp_path / "tune"))
    assert [t["status"] for t in trials] == ["COMPLETED"] * 3
    assert len({json.dumps(t["hyperparameters"]["values"], sort_keys=True) for t in trials}) == 3
    assert os.path.exists(tmp_path / "tune" / "best_genotype.json")


def test_bad_flags_exit_2_with_one_line(tmp_path):
    for args, message in (
        (("--directory=" + str(tmp_path),), "needs --search_dir"),
        (("--directory=" + str(tmp_path), "--search_dir=x", "--operations=none,bogus"), "bogus"),
        (
            ("--directory=" + str(tmp_path), "--search_dir=x", f"--export_dir={tmp_path}"),
            "already exists",
        ),
        (
            ("--directory=" + str(tmp_path), "--mode=search_options", "--export_dir=x"),
            "needs --mode=architectures",
        ),
    ):
        run = _tune(*args)
        assert run.returncode == 2, run.stderr[-3000:]
        assert message in run.stderr.strip().splitlines()[-1]


def test_search_options_are_the_search_binarys():
    # Every SearchConfig field has its flag here, read as the search binary reads it
    # (amending_coefficient takes auto; booleans and integers reach the config).
    code = """
import dataclasses
from absl import flags
from tf_amended_darts import search
from tf_amended_darts.bin import tune
flags.FLAGS(["tune", "--directory=unused", "--amending_coefficient=auto",
             "--mixed_precision=float16", "--sub_batches=2"])
config = tune._search_config()
fields = {f.name for f in dataclasses.fields(search.SearchConfig)}
print(config.amending_coefficient, config.mixed_precision, config.sub_batches,
      sorted(fields - set(tune._SEARCH_FLAGS)))
"""
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split("\n")[-2] == "auto float16 2 []"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
