"""study.run_study on a tiny plan: two runs of two epochs, an interruption, the resume, the
records; and the pure helpers (alpha masses, plan expansion)."""

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from unittest import mock

import numpy as np
import tensorflow as tf

from tf_amended_darts import diagnostics, errors, genotypes, loop, run_dir, search, study

TINY_PLAN = {
    "search": {
        "epochs": 2,
        "batch_size": 16,
        "steps_per_epoch": 2,
        "cells": 3,
        "nodes": 1,
        "channels": 4,
        "operations": ["skip_connect", "max_pool_3x3", "sep_conv_3x3"],
    },
    "datasets": ["digits"],
    "search_spaces": {"darts": {"search_space": "darts"}},
    "estimators": {
        "first_order": {"arch_gradient": "first_order"},
        "amended_0.1": {"arch_gradient": "amended", "amending_coefficient": 0.1},
    },
    "seeds": [0],
    "retrain": {
        "channels": 4,
        "cells": 3,
        "epochs": 1,
        "steps_per_epoch": 2,
        "batch_size": 16,
        "auxiliary": False,
        "cutout": 0,
        "drop_path": 0.0,
    },
    "hessian": {"iterations": 2, "examples": 16},
    "cosines": {
        "every": 2,
        "estimators": ["first_order"],
        "implicit_iterations": 2,
        "batch_size": 8,
    },
}


def _committed_runs(plan):
    """The planned runs of the committed plan studies/<plan>.json."""
    path = os.path.join(os.path.dirname(__file__), os.pardir, "studies", f"{plan}.json")
    return study.planned_runs(study.load_plan(path))


class HelpersTest(tf.test.TestCase):
    def test_alpha_masses_by_hand(self):
        ops = ["none", "skip_connect", "max_pool_3x3", "avg_pool_3x3", "sep_conv_3x3"]
        normal = [[0.1, 0.2, 0.3, 0.0, 0.4], [0.0, 0.6, 0.1, 0.1, 0.2]]
        reduce_ = [[0.2, 0.2, 0.2, 0.2, 0.2]]
        masses = study.alpha_masses([normal, reduce_], ops, ["normal_0", "reduce_0"])
        self.assertAllClose(masses["skip_connect"]["normal"], (0.2 + 0.6) / 2)
        self.assertAllClose(masses["pools"]["normal"], (0.3 + 0.2) / 2)
        self.assertAllClose(masses["pools"]["reduce"], 0.4)

    def test_cosines_take_the_plan_settings_and_record_the_reference_residual(self):
        measured = {
            "estimators": {
                "implicit": {"cosine_to_implicit": 1.0, "relative_residual": 2.5e-3},
                "first_order": {
                    "cosine_to_implicit": 0.5,
                    "correction_cosine_to_implicit": float("nan"),
                },
                "amended": {
                    "cosine_to_implicit": 0.25,
                    "correction_cosine_to_implicit": 0.75,
                    "best_eta": 0.01,
                    "cosine_to_implicit_at_best_eta": 0.9,
                },
            }
        }
        plan = {
            "estimators": ["first_order", "amended"],
            "amending_coefficient": 2.0,
            "cosines_damping": 0.5,
        }
        traced = {}
        with mock.patch.object(diagnostics, "diagnose", return_value=measured) as diagnose:
            cosines = study._cosines("run", plan, traced)
        (config,), kwargs = diagnose.call_args
        self.assertEqual(
            (
                config.amending_coefficient,
                config.cosines_damping,
                config.estimators,
                kwargs["traced"],
            ),
            (2.0, 0.5, ("first_order", "amended"), traced),
        )
        self.assertIs(kwargs["search_run"], "run")
        self.assertEqual(
            cosines,
            {
                "implicit": {"relative_residual": 2.5e-3},
                "first_order": {"cosine": 0.5, "correction_cosine": None},
                "amended": {
                    "cosine": 0.25,
                    "correction_cosine": 0.75,
                    "best_eta": 0.01,
                    "cosine_at_best_eta": 0.9,
                },
            },
        )

    def test_plan_expansion_and_bad_field(self):
        runs = study.planned_runs({**TINY_PLAN, "seeds": [0, 1]})
        self.assertEqual(
            [r.name for r in runs],
            [
                "digits-darts-first_order-s0",
                "digits-darts-first_order-s1",
                "digits-darts-amended_0.1-s0",
                "digits-darts-amended_0.1-s1",
            ],
        )
        self.assertEqual(runs[2].search.amending_coefficient, 0.1)
        with self.assertRaisesRegex(errors.InputError, "unknown search fields.*'etta'"):
            study.planned_runs({**TINY_PLAN, "estimators": {"x": {"etta": 1}}})
        # Each run must be selectable alone by its name (bin/study's run processes).
        with self.assertRaisesRegex(errors.InputError, "'digits-darts-first_order-s0' is repeated"):
            study.planned_runs({**TINY_PLAN, "seeds": [0, 0]})
        with self.assertRaisesRegex(errors.InputError, "'digits-darts-a,b-s0' is not usable"):
            study.planned_runs({**TINY_PLAN, "estimators": {"a,b": {}}})

    def test_runs_selected_by_glob_patterns(self):
        plan = {**TINY_PLAN, "seeds": [0, 1]}
        names = lambda runs: [r.name for r in study.planned_runs(plan, runs)]  # noqa: E731
        self.assertEqual(
            names(["*-s1"]), ["digits-darts-first_order-s1", "digits-darts-amended_0.1-s1"]
        )
        self.assertEqual(
            names(["*amended*-s0", "*first_order-s0"]),  # plan order, whatever the patterns' order
            ["digits-darts-first_order-s0", "digits-darts-amended_0.1-s0"],
        )
        with self.assertRaisesRegex(errors.InputError, "no run matches 'digits-enlarged-\\*'"):
            study.planned_runs(plan, ["*-s0", "digits-enlarged-*"])
        # run_study selects before it runs anything: a typo creates nothing.
        output_dir = os.path.join(self.get_temp_dir(), "typo")
        with self.assertRaises(errors.InputError):
            study.run_study(plan, output_dir, runs=["*-s7"])
        self.assertFalse(os.path.exists(output_dir))

    def test_committed_plan_is_valid(self):
        path = os.path.join(os.path.dirname(__file__), os.pardir, "studies", "collapse.json")
        runs = study.planned_runs(study.load_plan(path))
        self.assertLen(runs, 2 * 6 * 3)  # spaces x estimators x seeds
        self.assertEqual(
            {r.search.amending_coefficient for r in runs if r.search.arch_gradient == "amended"},
            {0.1, 1.0, 10.0, "auto"},
        )

    def test_committed_mnist5k_plan_is_valid(self):
        path = os.path.join(os.path.dirname(__file__), os.pardir, "studies", "mnist5k.json")
        plan = study.load_plan(path)
        runs = study.planned_runs(plan)
        self.assertLen(runs, 3 * 3)  # estimators x seeds
        self.assertEqual({r.search.dataset for r in runs}, {"mnist5k"})
        # The cosines are measured at the last epoch too (the report's "last measurement").
        self.assertEqual(runs[0].search.epochs % plan["cosines"]["every"], 0)

    def test_committed_pilot_plan_is_valid(self):
        path = os.path.join(os.path.dirname(__file__), os.pardir, "studies", "pilot.json")
        runs = study.planned_runs(study.load_plan(path))
        self.assertLen(runs, 2 * 4)  # datasets x spaces, first order, one seed
        self.assertEqual({r.search.search_space for r in runs}, {"darts", "s2", "s3", "s4"})

    def test_committed_pilot2_plan_matches_the_papers_architecture_budget(self):
        path = os.path.join(os.path.dirname(__file__), os.pardir, "studies", "pilot2.json")
        runs = study.planned_runs(study.load_plan(path))
        self.assertEqual({r.search.search_space for r in runs}, {"darts", "s2", "s3", "s4"})
        # Adam moves a logit by at most ~lr per step: steps x lr within 5 % of the paper's
        # 50 epochs x 391 steps x 3e-4 (digits: 719 architecture images, batch 32 -> 22 steps).
        search = runs[0].search
        steps = search.epochs * (719 // search.batch_size)
        self.assertAllClose(steps * search.arch_learning_rate, 50 * 391 * 3e-4, rtol=0.05)

    def test_committed_pilot3_plan_changes_only_weight_decay_and_depth_from_pilot2(self):
        pilot2 = {r.search.search_space: r.search for r in _committed_runs("pilot2")}
        runs = _committed_runs("pilot3")
        self.assertLen(runs, 7)
        for run in runs:
            changed = {
                f.name
                for f in dataclasses.fields(run.search)
                if getattr(run.search, f.name) != getattr(pilot2[run.search.search_space], f.name)
            }
            self.assertContainsSubset(changed, {"weight_decay", "cells"}, run.name)
            self.assertTrue(changed, run.name)
            # The run's name says what changed: wd0 = no weight decay, deep = 8 cells.
            self.assertEqual("wd0" in run.name, run.search.weight_decay == 0, run.name)
            self.assertEqual("deep" in run.name, run.search.cells == 8, run.name)

    def test_committed_pilot4_plan_is_pilot3s_deep_runs_searched_twice_as_long(self):
        pilot3 = {r.name: r.search for r in _committed_runs("pilot3")}
        runs = _committed_runs("pilot4")
        self.assertLen(runs, 2)
        for run in runs:
            # digits-s2_deep_long-first_order-s0 continues digits-s2_deep-first_order-s0.
            short = pilot3[run.name.replace("_deep_long-", "_deep-")]
            self.assertEqual(run.search.epochs, 2 * short.epochs, run.name)
            self.assertEqual(dataclasses.replace(run.search, epochs=short.epochs), short, run.name)

    def test_committed_pilot5_plan_is_pilot3s_setting_in_s1(self):
        pilot3 = _committed_runs("pilot3")
        s2 = next(r.search for r in pilot3 if r.name == "digits-s2_deep-first_order-s0")
        runs = _committed_runs("pilot5")
        self.assertEqual(
            sorted((r.search.cells, r.search.search_space) for r in runs), [(5, "s1"), (8, "s1")]
        )
        for run in runs:
            same = dataclasses.replace(run.search, search_space="s2", cells=8)
            self.assertEqual(same, s2, run.name)

    def test_committed_pilot6_plan_is_pilot3s_deep_runs_with_seeds_1_and_2(self):
        pilot3 = {r.name: r.search for r in _committed_runs("pilot3")}
        runs = _committed_runs("pilot6")
        self.assertEqual(
            sorted((r.search.search_space, r.search.seed) for r in runs),
            [("s2", 1), ("s2", 2), ("s3", 1), ("s3", 2)],
        )
        for run in runs:
            seed0 = pilot3[run.name.rsplit("-s", 1)[0] + "-s0"]
            self.assertEqual(dataclasses.replace(run.search, seed=0), seed0, run.name)

    def test_committed_pilot7_plan_is_mnist5k_at_the_papers_architecture_budget(self):
        pilot3 = {r.name: r.search for r in _committed_runs("pilot3")}
        runs = _committed_runs("pilot7")
        self.assertEqual(
            [r.search.search_space for r in runs], ["s2", "s3", "s2", "s3", "s4", "darts"]
        )  # the 8-cell runs first
        for run in runs:
            # mnist5k: 2,000 architecture images, batch 32 -> 62 steps per epoch.
            steps = run.search.epochs * (2000 // run.search.batch_size)
            self.assertAllClose(steps * run.search.arch_learning_rate, 50 * 391 * 3e-4, rtol=0.05)
            # Otherwise pilot 3's 8-cell S2 setting, apart from the space and the depth.
            same = dataclasses.replace(
                run.search, dataset="digits", arch_learning_rate=0.0053, search_space="s2", cells=8
            )
            self.assertEqual(same, pilot3["digits-s2_deep-first_order-s0"], run.name)

    def test_committed_s3_collapse_plan_compares_the_estimators_in_pilot_6s_collapsed_setting(self):
        pilot3 = {r.name: r.search for r in _committed_runs("pilot3")}
        runs = _committed_runs("s3_collapse")
        self.assertLen(runs, 5 * 3)
        settings = {
            (
                r.search.arch_gradient,
                r.search.amending_coefficient if r.search.arch_gradient == "amended" else None,
                r.search.seed,
            )
            for r in runs
        }
        estimators = {
            ("first_order", None),
            ("second_order", None),
            ("amended", 0.1),
            ("amended", 0.018),
            ("amended", "auto"),
        }
        self.assertEqual(settings, {(*e, seed) for e in estimators for seed in (0, 1, 2)})
        default = dataclasses.fields(type(runs[0].search))
        coefficient = next(f.default for f in default if f.name == "amending_coefficient")
        for run in runs:
            # pilot 3's 8-cell S3 first-order search but for the estimator and the seed.
            same = dataclasses.replace(
                run.search,
                arch_gradient="first_order",
                amending_coefficient=coefficient,
                seed=0,
            )
            self.assertEqual(same, pilot3["digits-s3_deep-first_order-s0"], run.name)
            self.assertIsNotNone(run.retrain, run.name)

    def test_bad_plan_file_is_one_line_input_error(self):
        path = os.path.join(self.get_temp_dir(), "plan.json")
        with open(path, "w") as f:
            f.write('{"seeds": [0], "unknown_key": 1}')
        with self.assertRaisesRegex(errors.InputError, "plan.json.*unknown: .'unknown_key'"):
            study.load_plan(path)
        with self.assertRaisesRegex(errors.InputError, "retrain fields .'chanels'"):
            study.planned_runs({**TINY_PLAN, "retrain": {"chanels": 4}})
        # A renamed key (the cosines' eta is amending_coefficient) is refused, not ignored.
        for key, settings in (("cosines", {"every": 1, "eta": 0.1}), ("hessian", {"iters": 4})):
            with open(path, "w") as f:
                json.dump({"estimators": {}, key: settings}, f)
            with self.assertRaisesRegex(errors.InputError, f"unknown {key} keys .'(eta|iters)'"):
                study.load_plan(path)


# Two runs of the cheapest estimator: the runner does nothing estimator-specific (the
# estimators' searches have tests of their own), and an amended run took half of this test.
RUN_PLAN = {
    **TINY_PLAN,
    "estimators": {"first_order": {"arch_gradient": "first_order"}},
    "seeds": [0, 1],
}

RUN_NAMES = ["digits-darts-first_order-s0", "digits-darts-first_order-s1"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class RunStudyTest(tf.test.TestCase):
    def test_interrupted_then_resumed_then_skipped(self):
        out = self.get_temp_dir()
        log = open(os.devnull, "w")
        self.addCleanup(log.close)
        # Interrupted in the second epoch of each search: the first epoch is recorded.
        records = study.run_study(RUN_PLAN, out, stop_after_steps=3, log_stream=log)
        self.assertEqual([[e["epoch"] for e in r["epochs"]] for r in records], [[1], [1]])
        self.assertNotIn("test_acc", records[0])
        # As if the first run had recorded epoch 2 and been stopped before its checkpoint:
        # the epoch runs again on resume and its entry is replaced, not duplicated.
        path = os.path.join(out, "records", records[0]["run"] + ".json")
        stale = {**records[0]["epochs"][0], "epoch": 2, "global_step": -1}
        with open(path, "w") as f:
            json.dump({**records[0], "epochs": records[0]["epochs"] + [stale]}, f)
        # Continued: both searches resume from their checkpoints and finish.
        records = study.run_study(RUN_PLAN, out, log_stream=log)
        for record in records:
            self.assertEqual([e["epoch"] for e in record["epochs"]], [1, 2])
            self.assertEqual([e["global_step"] for e in record["epochs"]], [2, 4])
            for e in record["epochs"]:
                self.assertTrue(np.isfinite(e["hessian_eigenvalue"]))
                self.assertBetween(e["valid_acc"], 0.0, 1.0)
                self.assertBetween(e["parameter_free_ops"], 0, 8)
                self.assertBetween(e["alpha_mass"]["skip_connect"]["normal"], 0.0, 1.0)
            cosines = [e["cosine_to_implicit"] for e in record["epochs"]]
            self.assertIsNone(cosines[0])  # every 2 epochs
            self.assertBetween(cosines[1]["first_order"]["cosine"], -1.0, 1.0)
            # The reference's CG residual says whether the cosines mean anything.
            residual = cosines[1]["implicit"]["relative_residual"]
            self.assertGreaterEqual(residual, 0.0)
            # First order has no correction: its correction cosine is undefined (null, not NaN).
            self.assertIsNone(cosines[1]["first_order"]["correction_cosine"])
            # Re-trained on the searched genotype; accuracy on the 360 test digits.
            self.assertBetween(record["test_acc"], 0.0, 1.0)
            retrained = genotypes.Genotype.from_dict(record["retrain"]["genotype"])
            self.assertEqual(retrained.to_string(), record["epochs"][-1]["genotype"])
            with open(os.path.join(out, "records", record["run"] + ".json")) as f:
                self.assertEqual(json.load(f), record)
            search_dir = os.path.join(out, "runs", record["run"], "search")
            log_txt = os.path.join(search_dir, "log.txt")
            with open(log_txt) as f:
                text = f.read()
            self.assertIn("resumed from", text)
            # The measures also reach the search's own epoch lines (and TensorBoard).
            for e in record["epochs"]:
                self.assertIn(f"hessian_eigenvalue={e['hessian_eigenvalue']:.4g}", text)
            self.assertIn(
                f"cosine_to_implicit/first_order={cosines[1]['first_order']['cosine']:.4g}", text
            )
            self.assertIn(f"relative_residual/implicit={residual:.4g}", text)
            # Measured on the live supernet at the epoch's end: the same as on the final
            # checkpoint (saved right after the last epoch's measures, with no step between).
            run = search.restore_search_network(search_dir)
            eigenvalue, _ = diagnostics.alpha_hessian_eigenvalue(
                run.network,
                loop.cross_entropy,
                search.architecture_batch(run.config, RUN_PLAN["hessian"]["examples"]),
                iterations=RUN_PLAN["hessian"]["iterations"],
            )
            self.assertAllClose(record["epochs"][-1]["hessian_eigenvalue"], eigenvalue, rtol=1e-5)
        # Finished runs are not searched again (the records, and the logs, stay as they are).
        mtime = os.path.getmtime(log_txt)
        self.assertEqual(study.run_study(RUN_PLAN, out, log_stream=log), records)
        self.assertEqual(os.path.getmtime(log_txt), mtime)


class StudyBinaryTest(tf.test.TestCase):
    def _command(self, plan):
        """(output dir, the bin/study command line) for `plan`, written to a file there."""
        out = self.get_temp_dir()
        plan_path = os.path.join(out, "plan.json")
        with open(plan_path, "w") as f:
            json.dump(plan, f)
        command = [sys.executable, "-m", "tf_amended_darts.bin.study", f"--plan={plan_path}"]
        return out, command + [f"--output_dir={out}", "--noreport"]

    def test_binary_runs_each_run_in_a_process_of_its_own(self):
        """bin/study with several runs starts itself once per run (--runs=<that run>), so a
        run's memory goes back before the next; a child's bad exit stops the study with it."""
        out, command = self._command(RUN_PLAN)
        command.append("--stop_after_steps=2")
        done = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        stdout, stderr = (s.decode() for s in done.communicate())
        self.assertEqual(done.returncode, 0, stderr[-3000:])
        started = re.findall(r"^study: run (\d)/2 (\S+) \(process (\d+)\)$", stdout, re.M)
        self.assertEqual(
            [(i, n) for i, n, _ in started], [("1", RUN_NAMES[0]), ("2", RUN_NAMES[1])]
        )
        pids = {int(pid) for _, _, pid in started}
        self.assertEqual(len(pids), 2)
        self.assertNotIn(done.pid, pids)
        # Each child ran its run (one epoch recorded: stopped at step 2) and said so.
        for name in RUN_NAMES:
            with open(os.path.join(out, "records", name + ".json")) as f:
                self.assertEqual([e["epoch"] for e in json.load(f)["epochs"]], [1])
            self.assertIn(f'"run": "{name}", "epochs": 1', stdout)
        self.assertNotIn("report", os.listdir(out))  # --noreport
        # A failing child (here: bad input, a dataset that is not there) stops the study with
        # its exit status, before the next run.
        _, command = self._command({**RUN_PLAN, "datasets": ["no_such_dataset"]})
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        self.assertEqual(done.returncode, 2, done.stderr[-3000:])
        self.assertEqual(len(re.findall("^study: run", done.stdout, re.M)), 1, done.stdout)

    def test_a_killed_study_takes_its_run_process_with_it(self):
        """kill -9 of the study process ends the run's process too (no orphan keeps the run's
        lock and goes on searching)."""
        _, command = self._command(RUN_PLAN)
        study_process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=ROOT,
        )
        self.addCleanup(study_process.stdout.close)
        self.addCleanup(study_process.wait)
        self.addCleanup(study_process.kill)  # the test failed before killing it
        line = study_process.stdout.readline()
        match = re.match(r"study: run 1/2 \S+ \(process (\d+)\)$", line)
        self.assertIsNotNone(match, line)
        child = int(match.group(1))
        self.assertTrue(_alive(child))
        study_process.kill()
        study_process.wait()
        deadline = time.monotonic() + 30
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.2)
        self.assertFalse(_alive(child))


def _alive(pid):
    """Whether `pid` runs (a zombie, ended but not reaped by its new parent, does not), as
    run_dir reads a lock owner's state."""
    state = run_dir._process_start(pid)  # pylint: disable=protected-access
    return state is not None and state[0] != "Z"


if __name__ == "__main__":
    tf.test.main()
