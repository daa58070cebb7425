"""The search loop: outputs, one trace per step function, schedule, bad configs.

Stop-and-resume (deterministic) is tested through the binary in search_binary_test.py."""

import json
import os

import numpy as np
import tensorflow as tf

from tf_amended_darts import genotypes, search, search_model

# A tiny supernet on 8x8 digits: 3 cells, 1 node, 4 operations, C=4.
TINY = dict(cells=3, nodes=1, channels=4, batch_size=16,
            operations=("none", "skip_connect", "avg_pool_3x3", "sep_conv_3x3"))


def _run(directory, **kwargs):
    options = {k: kwargs.pop(k) for k in ("resume", "overwrite", "stop_after_steps",
                                          "checkpoint_every") if k in kwargs}
    config = search.SearchConfig(**{**TINY, **kwargs})
    with open(os.devnull, "w") as quiet:
        return search.search(config, directory, render=False, log_stream=quiet,
                             progress_stream=quiet, **options)


class SearchTest(tf.test.TestCase):

    def test_outputs_and_single_trace(self):
        directory = self.get_temp_dir() + "/out"
        result = _run(directory, arch_gradient="amended", epochs=3, warmup_epochs=1,
                      steps_per_epoch=2)
        self.assertTrue(result.finished)
        self.assertEqual(result.global_step, 6)
        # Each step function traced once, across epochs with fresh datasets.
        self.assertEqual(result.traces, {"search_step": 1, "weight_step": 1})
        with open(os.path.join(directory, search.HISTORY_FILE)) as f:
            history = json.load(f)
        self.assertEqual(history["operations"], list(TINY["operations"]))
        self.assertEqual(history["slots"], ["normal_0", "reduce_0"])
        self.assertEqual([(r["epoch"], r["step"]) for r in history["records"]],
                         [(0, 0), (1, 2), (2, 4), (3, 6)])
        last = np.array(history["records"][-1]["probabilities"])
        self.assertEqual(last.shape, (2, 2, 4))
        self.assertAllClose(last.sum(-1), np.ones((2, 2)))
        # Warm-up epoch: alphas unchanged; afterwards they move.
        first, warm = (np.array(history["records"][i]["probabilities"]) for i in (0, 1))
        self.assertAllClose(first, warm, atol=0, rtol=0)
        self.assertNotAllClose(warm, last)
        self.assertEqual(genotypes.load_genotype(os.path.join(directory, "genotype.json")),
                         result.genotype)
        with open(os.path.join(directory, "run.json")) as f:
            self.assertIn("AmendedEstimator", json.load(f)["estimator"])
        with open(os.path.join(directory, "log.txt")) as f:
            log = f.read()
        self.assertIn("estimator 'amended' runs", log)
        self.assertIn("parameter_free_ops=", log)
        self.assertNotEmpty(os.listdir(os.path.join(directory, "tensorboard")))
        # The checkpoint holds every model variable, BatchNorm moving statistics included
        # (Keras 3 keeps cells in lists that tf.train.Checkpoint(model=...) does not follow).
        reader = tf.train.load_checkpoint(os.path.join(directory, "checkpoints"))
        saved = [k for k in reader.get_variable_to_shape_map() if k.startswith("network/")]
        model = search_model.SearchNetwork(search.SearchConfig(**TINY).space(), 10)
        model.build((None, 8, 8, 1))
        self.assertLen(saved, len(model.variables))
        self.assertLen([k for k in saved if "moving_mean" in k],
                       len([v for v in model.variables if "moving_mean" in v.path]))

    def test_refuses_directory_of_another_run(self):
        directory = self.get_temp_dir() + "/taken"
        _run(directory, arch_gradient="first_order", epochs=1, steps_per_epoch=1,
             validate=False)
        with self.assertRaisesRegex(ValueError, "different search.*differs in: seed"):
            _run(directory, arch_gradient="first_order", epochs=1, steps_per_epoch=1,
                 validate=False, seed=1, resume=True)

    def test_cosine_schedule_per_epoch(self):
        config = search.SearchConfig(epochs=50)
        self.assertAlmostEqual(config.learning_rate_at(0), 0.025)
        self.assertAlmostEqual(config.learning_rate_at(25), 0.013)
        self.assertAlmostEqual(config.learning_rate_at(50), 0.001)

    def test_bad_configs(self):
        for kwargs, message in [({"learning_rate": -0.1}, "learning_rate"),
                                ({"batch_size": 0}, "batch_size"),
                                ({"train_portion": 1.0}, "train_portion")]:
            with self.assertRaisesRegex(ValueError, message):
                search.SearchConfig(**kwargs)
        with self.assertRaisesRegex(ValueError, "unknown operation"):
            search.SearchConfig(operations=("none", "bogus")).space()
        with self.assertRaisesRegex(ValueError, "unknown estimator"):
            search.SearchConfig(arch_gradient="zeroth").estimator()


if __name__ == "__main__":
    tf.test.main()
