"""Strategy selection; the all-reduce's derivatives; 2 replicas give the 1-device alphas; two
localhost workers agree.

Needs 2 logical CPUs configured before any TF op: tests/conftest.py does it under pytest, the
block below when this file runs as a script (bazel)."""

import json
import os
import socket
import subprocess
import sys

import tensorflow as tf
from tensorflow.python.ops import op_selector

from tf_amended_darts import distribute, search

if __name__ == "__main__":
    distribute.configure_logical_cpus(2)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(
    cells=3,
    nodes=1,
    channels=4,
    batch_size=16,
    epochs=1,
    steps_per_epoch=3,
    operations=("none", "skip_connect", "avg_pool_3x3", "sep_conv_3x3"),
)

WORKER = """
import json, os, sys
from tf_amended_darts import distribute, search
strategy = distribute.make_strategy("auto")
config = search.SearchConfig(**json.loads(sys.argv[1]))
with open(os.devnull, "w") as quiet:
    result = search.search(config, sys.argv[2], strategy, render=False, log_stream=quiet,
                           progress_stream=quiet)
print("RESULT " + json.dumps({"alphas": [a.tolist() for a in result.alphas],
                              "genotype": result.genotype.to_string(),
                              "replicas": strategy.num_replicas_in_sync}))
"""


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _search(directory, strategy, **overrides):
    with open(os.devnull, "w") as quiet:
        return search.search(
            search.SearchConfig(**{**TINY, **overrides}),
            directory,
            strategy,
            render=False,
            log_stream=quiet,
            progress_stream=quiet,
        )


class DistributeTest(tf.test.TestCase):
    def test_strategy_names_and_batch_check(self):
        with self.assertRaisesRegex(ValueError, "unknown strategy 'gpu'"):
            distribute.make_strategy("gpu")
        self.assertEqual(distribute.make_strategy("one_device").num_replicas_in_sync, 1)
        mirrored = distribute.make_strategy("mirrored")
        self.assertEqual(mirrored.num_replicas_in_sync, 2)
        self.assertEqual(distribute.check_global_batch(32, mirrored), 16)
        with self.assertRaisesRegex(
            ValueError, "batch size 15 is not a positive multiple of the 2 replicas"
        ):
            distribute.check_global_batch(15, mirrored)
        self.assertTrue(distribute.is_chief(mirrored))

    def test_all_reduce_sum_derivatives_to_second_order(self):
        # Replica r holds a_r and the shared scalar w; s = all_reduce_sum(a_r w) = w A with
        # A = sum_r a_r; replica r's loss is a_r s^2, the total A^3 w^2. Summed over the
        # replicas, the per-replica derivatives are the total's: 2 A^3 w, then 2 A^3 (a
        # gradient that ignored the other replicas would give 2 w A sum_r a_r^2).
        mirrored = distribute.make_strategy("mirrored")
        a = [1.5, -0.25]
        total = sum(a)
        with mirrored.scope():
            w = tf.Variable(0.7, dtype=tf.float64)

        @tf.function(autograph=False)
        def step():
            def replica():
                a_r = tf.constant(a, tf.float64)[
                    tf.distribute.get_replica_context().replica_id_in_sync_group
                ]
                with tf.GradientTape() as outer:
                    with tf.GradientTape() as inner:
                        s = distribute.all_reduce_sum(a_r * w)
                        loss = a_r * s**2
                    first = inner.gradient(loss, w)
                return first, outer.gradient(first, w), s

            first, second, s = mirrored.run(replica)
            reduce = lambda v: mirrored.reduce("SUM", v, axis=None)  # noqa: E731
            return reduce(first), reduce(second), mirrored.experimental_local_results(s)

        first, second, sums = step()
        self.assertAllClose(sums, [0.7 * total] * 2, rtol=1e-14, atol=0)
        self.assertAllClose(first, 2 * total**3 * 0.7, rtol=1e-14, atol=0)
        self.assertAllClose(second, 2 * total**3, rtol=1e-14, atol=0)

    def test_all_reduce_sum_does_not_walk_the_graph_behind_it(self):
        # tf.custom_gradient walks back from its outputs (to find variables) when a graph is
        # built; ReplicaContext.all_reduce's own walk reached the other replica's inputs and
        # everything before them, once per all-reduce: here a 300-op chain, in a supernet
        # the whole step. The walk must stay inside the reduction.
        mirrored = distribute.make_strategy("mirrored")
        walked = []
        walk = op_selector.get_backward_walk_ops

        def counting_walk(*args, **kwargs):
            ops = walk(*args, **kwargs)
            walked.append(len(ops))
            return ops

        def replica(x):
            for _ in range(300):
                x = tf.sin(x)
            return distribute.all_reduce_sum([x, 2.0 * x])

        op_selector.get_backward_walk_ops = counting_walk
        try:
            tf.function(lambda: mirrored.run(replica, args=(tf.ones([3]),))).get_concrete_function()
        finally:
            op_selector.get_backward_walk_ops = walk
        self.assertNotEmpty(walked)
        self.assertLess(max(walked), 50, walked)

    def test_two_replicas_match_one_device(self):
        mirrored = distribute.make_strategy("mirrored")
        for estimator in ("amended",):
            one = _search(
                self.get_temp_dir() + "/one_" + estimator,
                tf.distribute.get_strategy(),
                arch_gradient=estimator,
            )
            two = _search(
                self.get_temp_dir() + "/two_" + estimator, mirrored, arch_gradient=estimator
            )
            for a, b in zip(one.alphas, two.alphas):
                self.assertAllClose(a, b, atol=1e-4, rtol=0)
                self.assertGreater(abs(a).max(), 1e-3)  # the alphas did move
            self.assertEqual(one.genotype, two.genotype)

    def test_two_workers_on_localhost_agree(self):
        ports = _free_ports(2)
        cluster = {"worker": [f"localhost:{p}" for p in ports]}
        config = json.dumps(
            {
                **TINY,
                "arch_gradient": "first_order",
                "operations": list(TINY["operations"]),
                "validate": False,
            }
        )
        directory = self.get_temp_dir() + "/multi"
        processes = []
        for index in range(2):
            env = dict(
                os.environ,
                PYTHONPATH=REPO,
                TF_CPP_MIN_LOG_LEVEL="2",
                TF_CONFIG=json.dumps(
                    {"cluster": cluster, "task": {"type": "worker", "index": index}}
                ),
            )
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-c", WORKER, config, directory],
                    cwd=REPO,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        results = []
        for p in processes:
            out, err = p.communicate(timeout=300)
            self.assertEqual(p.returncode, 0, err[-3000:])
            results.append(json.loads(out.split("RESULT ", 1)[1]))
        self.assertEqual(results[0]["replicas"], 2)
        self.assertEqual(results[0]["genotype"], results[1]["genotype"])
        self.assertAllClose(results[0]["alphas"], results[1]["alphas"], atol=0, rtol=0)
        self.assertTrue(os.path.exists(os.path.join(directory, "genotype.json")))


if __name__ == "__main__":
    tf.test.main()
