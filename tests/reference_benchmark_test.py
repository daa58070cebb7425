"""benchmarks/reference_benchmark.py: the project's side measured for real on a tiny supernet,
the reference's replaced by a fake script (PyTorch is no dependency of the project), to check
that the two run alternately, each in its own process, the ratios of the report, and its
section appended to a results file (benchmarks/results_log.py)."""

import json
import os
import shlex
import subprocess
import sys
import textwrap
from unittest import mock

import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import reference_comparison as comparison  # noqa: E402
import results_log  # noqa: E402

TINY = [
    "--channels=4",
    "--cells=3",
    "--nodes=1",
    "--batch_size=4",
    "--image_size=8",
    "--steps=1",
    "--threads=1",
]
# The fake reference's s/iteration and peak RSS per mode.
FAKE_SECONDS = {"first": 0.5, "second": 2.0, "amended": 3.0}
FAKE_RSS_MB = {"first": 100.0, "second": 400.0, "amended": 200.0}


def _fake_reference(directory, nodes_option=True):
    """A script with reference_bench.py's interface that logs each call (its arguments and
    the time) to calls.jsonl beside it and prints FAKE_SECONDS' figures as one JSON line."""
    path = os.path.join(directory, "fake_reference.py")
    nodes = 'parser.add_argument("--nodes", type=int, default=4)' if nodes_option else ""
    with open(path, "w") as f:
        f.write(
            textwrap.dedent(
                f"""\
                import argparse, json, os, time
                parser = argparse.ArgumentParser()
                for name in ("channels", "layers", "batch", "size", "steps", "threads"):
                    parser.add_argument("--" + name, type=int, required=True)
                parser.add_argument("--mode", required=True)
                {nodes}
                args = parser.parse_args()
                log = os.path.join(os.path.dirname(os.path.abspath(__file__)), "calls.jsonl")
                with open(log, "a") as f:
                    f.write(json.dumps(dict(vars(args), time=time.time())) + "\\n")
                print("reference chatter before the result")
                print(json.dumps({{"mode": args.mode, "first_call_s": 0.25,
                                  "median_s": {FAKE_SECONDS}[args.mode],
                                  "peak_rss_mb": {FAKE_RSS_MB}[args.mode]}}))
                """
            )
        )
    return path


def _benchmark(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", "reference_benchmark.py"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def _run(estimator, side, s, first, rss):
    result = {"s_per_iteration": s, "first_call_s": first, "peak_rss_mb": rss}
    return {"estimator": estimator, "side": side, "result": result}


class ComparisonTest(tf.test.TestCase):
    def test_schedule_alternates_ours_and_the_reference_per_estimator(self):
        self.assertEqual(
            comparison.schedule(["first_order", "second_order", "amended"], 2),
            [
                (estimator, side)
                for estimator in ("first_order", "second_order", "amended")
                for side in ("ours", "reference", "ours", "reference")
            ],
        )

    def test_ratios_from_medians_and_peaks(self):
        runs = [
            _run("first_order", "ours", 1.0, 10.0, 500.0),
            _run("first_order", "ours", 3.0, 30.0, 700.0),  # median s 2.0, peak 700
            _run("first_order", "reference", 8.0, 1.0, 1000.0),
            _run("second_order", "ours", 5.0, 50.0, 900.0),
            _run("second_order", "reference", 10.0, 2.0, 1800.0),
            _run("amended", "ours", 6.0, 60.0, 1200.0),
            _run("amended", "reference", 12.0, 3.0, 1500.0),
        ]
        rows = comparison.rows(runs, ["first_order", "second_order", "amended"], batch_size=16)
        first, second, amended = rows
        self.assertEqual(first["ours"]["s_per_iteration"], 2.0)
        self.assertEqual(first["ours"]["first_call_s"], 20.0)
        self.assertEqual(first["ours"]["peak_rss_mb"], 700.0)
        self.assertEqual(first["ours"]["images_per_s"], 8.0)
        self.assertEqual(first["x_reference"], 2.0 / 8.0)
        self.assertEqual(first["rss_x_reference"], 700.0 / 1000.0)
        self.assertEqual(second["x_reference"], 5.0 / 10.0)
        self.assertEqual(amended["x_reference"], 6.0 / 12.0)
        self.assertEqual(amended["rss_x_reference"], 1200.0 / 1500.0)
        self.assertEqual(amended["x_reference_second_order"], 6.0 / 10.0)
        self.assertEqual(amended["rss_x_reference_second_order"], 1200.0 / 1800.0)
        self.assertEqual(amended["x_our_first_order"], 6.0 / 2.0)
        self.assertIn("| amended | 6.000 | 12.000 | 2.7 | 1.3 |", comparison.table(rows))

    def test_a_failed_side_has_no_ratios(self):
        runs = [
            _run("amended", "ours", 6.0, 60.0, 1200.0),
            {"estimator": "amended", "side": "reference", "result": {"error": "exit -9: "}},
        ]
        (row,) = comparison.rows(runs, ["amended"], batch_size=16)
        self.assertEqual(row["reference"], {"error": "exit -9: "})
        self.assertIsNone(row["x_reference"])
        self.assertIsNone(row["x_our_first_order"])  # first order not run
        self.assertIn("failed: exit -9", comparison.table([row]))


class ResultsLogTest(tf.test.TestCase):
    def test_sections_are_appended_with_date_load_commit_and_command(self):
        path = os.path.join(self.get_temp_dir(), "RESULTS.md")
        with open(path, "w") as f:
            f.write("# Results\n\nEarlier measurements, kept as they were.")
        argv = ["benchmarks/estimators_benchmark.py", "--steps=2", "--estimators=a b"]
        run = results_log.start_run(argv)
        self.assertLen(run.load_at_start, 3)
        self.assertEqual(run.started.utcoffset().total_seconds(), 0)
        results_log.append_section(path, run, "| x |\n|---|\n| 1 |\n", (1.0, 2.0, 3.0))
        results_log.append_section(path, run, "| x |\n|---|\n| 2 |", (0.5, 0.25, 0.125))
        with open(path) as f:
            text = f.read()
        self.assertStartsWith(text, "# Results\n\nEarlier measurements, kept as they were.\n\n")
        first, second = text.split("\n### ")[1:]
        self.assertStartsWith(
            first,
            f"{run.started:%Y-%m-%d %H:%M} UTC, estimators_benchmark.py, load "
            + " ".join(f"{x:.2f}" for x in run.load_at_start)
            + f" -> 1.00 2.00 3.00, commit {run.commit}\n\n```sh\n",
        )
        command = first.split("```sh\n")[1].split("\n```")[0]
        self.assertEqual(shlex.split(command), ["python", *argv])  # exact, quoted
        self.assertEndsWith(first, "| 1 |\n")  # and a blank line before the next heading
        self.assertIn("-> 0.50 0.25 0.12,", second)
        self.assertEndsWith(second, "| 2 |\n")
        # This test runs in the project's git checkout: a real commit hash.
        self.assertRegex(run.commit, r"^([0-9a-f]{12}( \+ changes)?|unknown)$")
        self.assertEqual(os.listdir(self.get_temp_dir()), ["RESULTS.md"])  # no temporary left

    def test_a_failed_write_leaves_the_file_as_it_was(self):
        path = os.path.join(self.get_temp_dir(), "RESULTS.md")
        with open(path, "w") as f:
            f.write("before\n")
        run = results_log.start_run(["benchmarks/x.py"])
        with mock.patch.object(os, "replace", side_effect=OSError(28, "No space left")):
            with self.assertRaisesRegex(Exception, "No space left"):
                results_log.append_section(path, run, "| table |")
        with open(path) as f:
            self.assertEqual(f.read(), "before\n")
        self.assertEqual(os.listdir(self.get_temp_dir()), ["RESULTS.md"])

    def test_outside_a_git_checkout_the_commit_is_unknown(self):
        self.assertEqual(results_log.git_commit(self.get_temp_dir()), "unknown")


class ReferenceBenchmarkTest(tf.test.TestCase):
    def test_runs_alternately_with_the_reference_and_reports_json(self):
        directory = self.get_temp_dir()
        fake = _fake_reference(directory)
        run = _benchmark(
            *TINY,
            "--estimators=first_order",
            "--repeats=2",
            f"--reference_python={sys.executable}",
            f"--reference_script={fake}",
            "--format=json",
            f"--results={os.path.join(directory, 'RESULTS.md')}",
        )
        self.assertEqual(run.returncode, 0, run.stderr[-3000:])
        report = json.loads(run.stdout)
        with open(os.path.join(directory, "RESULTS.md")) as f:
            section = f.read()
        self.assertStartsWith(section, "### ")
        self.assertIn("reference_benchmark.py, load ", section)
        self.assertIn("--estimators=first_order --repeats=2", section)
        self.assertIn("| first_order |", section)
        runs = report["runs"]
        self.assertEqual([r["side"] for r in runs], ["ours", "reference", "ours", "reference"])
        for earlier, later in zip(runs, runs[1:]):
            self.assertLessEqual(earlier["ended"], later["started"])  # one at a time
        with open(os.path.join(directory, "calls.jsonl")) as f:
            calls = [json.loads(line) for line in f]
        self.assertLen(calls, 2)  # --help is not logged: argparse exits before
        for i, call in enumerate(calls):  # each inside its run, between ours before and after
            self.assertBetween(call["time"], runs[2 * i + 1]["started"], runs[2 * i + 1]["ended"])
            self.assertGreaterEqual(call["time"], runs[2 * i]["ended"])
            if 2 * i + 2 < len(runs):
                self.assertLessEqual(call["time"], runs[2 * i + 2]["started"])
            self.assertEqual(
                {k: call[k] for k in ("channels", "layers", "nodes", "batch", "size", "steps")},
                dict(channels=4, layers=3, nodes=1, batch=4, size=8, steps=1),
            )
            self.assertEqual((call["mode"], call["threads"]), ("first", 1))
        ours = [r["result"] for r in runs if r["side"] == "ours"]
        for result in ours:  # really measured, in a process of its own
            self.assertEqual(result["raw"]["traces"], {"search_step": 1, "weight_step": 0})
            self.assertEqual(result["raw"]["threads"], 1)
            self.assertGreater(result["s_per_iteration"], 0)
        (row,) = report["rows"]
        median = sum(r["s_per_iteration"] for r in ours) / 2  # median of two
        self.assertAllClose(row["ours"]["s_per_iteration"], median)
        self.assertAllClose(row["x_reference"], median / FAKE_SECONDS["first"])
        peak = max(r["peak_rss_mb"] for r in ours)
        self.assertAllClose(row["rss_x_reference"], peak / FAKE_RSS_MB["first"])
        self.assertAllClose(row["ours"]["images_per_s"], 4 / median)
        self.assertEqual(row["reference"]["s_per_iteration"], FAKE_SECONDS["first"])
        self.assertIsNone(row["x_reference_second_order"])  # not run
        self.assertEqual(report["configuration"]["nodes"], 1)
        self.assertEqual(report["cpus"], os.cpu_count())
        self.assertLen(report["load_average_start"], 3)
        self.assertLen(report["load_average_end"], 3)

    def test_refusals_are_one_line_and_exit_2(self):
        directory = self.get_temp_dir()
        for args, message in (
            (
                # The real reference has no nodes option: its cells have 4.
                [f"--reference_script={_fake_reference(directory, nodes_option=False)}"],
                "--nodes=1: ",
            ),
            (["--reference_python=/nonexistent/python"], "--reference_python /nonexistent"),
            (["--estimators=implicit"], "--estimators: 'implicit' has no reference counterpart"),
        ):
            run = _benchmark(*TINY, f"--reference_python={sys.executable}", *args)
            self.assertEqual(run.returncode, 2, run.stderr[-3000:])
            lines = run.stderr.strip().splitlines()
            self.assertIn(message, lines[-1])
            self.assertStartsWith(lines[-1], "reference_benchmark: error: ")
            self.assertEqual(run.stdout, "")


if __name__ == "__main__":
    tf.test.main()
