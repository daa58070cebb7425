"""study_report: tables and plots from synthetic study records with known values."""

import json
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np

from tf_amended_darts import errors, genotypes, study_report


def _entry(epoch, free_ops, skip, eigenvalue, valid_acc):
    return {
        "epoch": epoch,
        "parameter_free_ops": free_ops,
        "alpha_mass": {
            "skip_connect": {"normal": skip, "reduce": 0.1},
            "pools": {"normal": 0.2, "reduce": 0.3},
        },
        "hessian_eigenvalue": eigenvalue,
        "valid_acc": valid_acc,
    }


ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)


def _write_records(records_dir):
    os.makedirs(records_dir)
    for record in _records():
        with open(os.path.join(records_dir, record["run"] + ".json"), "w") as f:
            json.dump(record, f)


def _records():
    """Seeds 0 and 1 of first_order finished (3 epochs), seed 2 at epoch 1; amended seed 0."""
    finished = [
        {
            "run": f"digits-darts-first_order-s{seed}",
            "search": {"epochs": 3},
            "epochs": [_entry(e, e + seed, 0.1 * e, 0.5 * e + seed, 0.8) for e in (1, 2, 3)],
            "test_acc": 0.9 + 0.01 * seed,
        }
        for seed in (0, 1)
    ]
    running = {
        "run": "digits-darts-first_order-s2",
        "search": {"epochs": 3},
        "epochs": [_entry(1, 7, 0.5, 9.0, 0.5)],
    }
    amended = {
        "run": "digits-darts-amended_1-s0",
        "search": {"epochs": 3},
        "epochs": [_entry(e, 1, 0.05, None, 0.85) for e in (1, 2, 3)],
    }
    return finished + [running, amended]


class StudyReportTest(unittest.TestCase):
    def test_summary_groups_runs_and_keeps_unfinished_epochs_out_of_finals(self):
        summary = study_report.summarize(_records())
        self.assertEqual(
            list(summary), [("digits", "darts", "first_order"), ("digits", "darts", "amended_1")]
        )
        group = summary[("digits", "darts", "first_order")]
        self.assertEqual(group.finished, 2)
        self.assertEqual(group.test_acc, [0.9, 0.91])
        # Epoch 1 has all three seeds; epoch 3 only the finished two (the third is NaN).
        np.testing.assert_allclose(group.curves["parameter_free_ops"][0], [1, 2, 7])
        np.testing.assert_allclose(group.curves["parameter_free_ops"][2], [3, 4, np.nan])
        np.testing.assert_allclose(study_report._final(group, "hessian_eigenvalue"), [1.5, 2.5])
        # A missing eigenvalue (null in the record) is NaN, not zero.
        self.assertTrue(
            np.isnan(summary[("digits", "darts", "amended_1")].curves["hessian_eigenvalue"]).all()
        )

    def test_estimators_listed_by_gradient_then_coefficient(self):
        # Record files come in alphabetical order; the table lists first order, second order,
        # amended by increasing coefficient with auto last, whatever the file order.
        searches = {
            "amended_10": {"arch_gradient": "amended", "amending_coefficient": 10.0},
            "amended_auto": {"arch_gradient": "amended", "amending_coefficient": "auto"},
            "amended_0.1": {"arch_gradient": "amended", "amending_coefficient": 0.1},
            "second_order": {"arch_gradient": "second_order", "amending_coefficient": 0.1},
            "first_order": {"arch_gradient": "first_order", "amending_coefficient": 0.1},
        }
        records = [
            {
                "run": f"digits-darts-{name}-s0",
                "search": {"epochs": 1, **search},
                "epochs": [_entry(1, 1, 0.1, 0.5, 0.8)],
            }
            for name, search in sorted(searches.items())
        ]
        summary = study_report.summarize(records)
        self.assertEqual(
            [key[2] for key in summary],
            ["first_order", "second_order", "amended_0.1", "amended_10", "amended_auto"],
        )
        rows = [
            line.split("|")[1].strip()
            for line in study_report.markdown(summary).splitlines()
            if line.startswith("| ") and not line.startswith("| estimator")
        ]
        self.assertEqual(rows, [key[2] for key in summary])

    def test_markdown_shows_mean_and_sample_std_over_finished_seeds(self):
        table = study_report.markdown(study_report.summarize(_records()))
        row = next(line for line in table.splitlines() if line.startswith("| first_order"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        # parameter-free ops at epoch 3: seeds 3 and 4 -> mean 3.5, sample std 0.7071.
        self.assertEqual(cells[1], "2/3")
        self.assertEqual(cells[2], f"3.50 ± {np.std([3, 4], ddof=1):.2f}")
        self.assertEqual(cells[3], "0.300 ± 0.000")
        self.assertEqual(cells[5], f"2.000 ± {np.std([1.5, 2.5], ddof=1):.3f}")
        self.assertEqual(cells[6], f"2.000 ± {np.std([1.5, 2.5], ddof=1):.3f}")  # max = last
        self.assertEqual(cells[8], f"0.9050 ± {np.std([0.9, 0.91], ddof=1):.4f}")
        amended = next(line for line in table.splitlines() if line.startswith("| amended_1"))
        # One finished seed: no spread; no eigenvalue recorded: a dash, not 0 or nan.
        self.assertIn("| 1/1 | 1.00 | 0.050 | 0.200 | — | — | 0.8500 | — |", amended)
        # With the plan's seeds the denominator is the plan's, not the records found.
        planned = study_report.markdown(study_report.summarize(_records(), planned_seeds=3))
        self.assertIn("| amended_1 | 1/3 |", planned)
        self.assertIn("| first_order | 2/3 |", planned)

    def test_cosines_table_and_plot_at_the_last_measurement(self):
        def cosines(first, amended, residual):
            return {
                "first_order": {"cosine": first, "correction_cosine": None},
                "amended": {"cosine": amended, "correction_cosine": 0.5},
                "implicit": {"relative_residual": residual},
            }

        records = []
        for seed in (0, 1, 2):
            epochs = [_entry(e, 1, 0.1, 0.5, 0.8) for e in (1, 2, 3, 4, 5)]
            epochs[1]["cosine_to_implicit"] = cosines(0.9, 0.8, 1e-3)  # epoch 2
            epochs[3]["cosine_to_implicit"] = cosines(0.1 * seed, 0.2 + 0.2 * seed, 1e-4 * seed)
            if seed == 2:  # a failed reference solve: its cosines are void
                epochs[3]["cosine_to_implicit"] = cosines(0.99, -0.5, 0.74)
            records.append(
                {
                    "run": f"digits-darts-amended_1-s{seed}",
                    "search": {"epochs": 5},
                    "epochs": epochs,
                }
            )
        records.append(  # a run without measurements beside them: dashes
            {
                "run": "digits-darts-first_order-s0",
                "search": {"epochs": 5},
                "epochs": [_entry(e, 1, 0.1, 0.5, 0.8) for e in (1, 2, 3, 4, 5)],
            }
        )
        summary = study_report.summarize(records)
        group = summary[("digits", "darts", "amended_1")]
        np.testing.assert_allclose(
            group.curves["cosine_amended"][:, 1], [np.nan, 0.8, np.nan, 0.4, np.nan]
        )
        np.testing.assert_allclose(
            group.curves["cosine_amended"][:, 2], [np.nan, 0.8, np.nan, np.nan, np.nan]
        )
        self.assertEqual(group.curves["reference_residual"][3, 2], 0.74)
        table = study_report.markdown(summary)
        # Epoch 4 is the last measured (not epoch 5, which has none); second order was not
        # measured: a dash; seed 2's measurement there is void (residual 0.74 > 0.1): out of
        # the means, counted in the last column.
        row = next(line for line in table.splitlines() if line.startswith("| amended_1 | 0."))
        cells = [c.strip() for c in row.strip("|").split("|")]
        self.assertEqual(cells[1], f"0.050 ± {np.std([0.0, 0.1], ddof=1):.3f}")
        self.assertEqual(cells[2], "—")
        self.assertEqual(cells[3], f"0.300 ± {np.std([0.2, 0.4], ddof=1):.3f}")
        self.assertEqual(cells[4], f"5.0e-05 ± {np.std([0.0, 1e-4], ddof=1):.1e}")
        self.assertEqual(cells[5], "1 of 3")
        self.assertIn("| first_order | — | — | — | — | — |", table.splitlines())
        with tempfile.TemporaryDirectory() as tmp:
            paths = study_report.plot(summary, tmp)
            self.assertIn(os.path.join(tmp, "cosine_to_implicit.png"), paths)
        # Without cosines in the records: no table, no plot (test_write_report_...).
        self.assertNotIn(
            "implicit reference", study_report.markdown(study_report.summarize(_records()))
        )

    def test_unconverged_eigenvalues_are_void_and_counted(self):
        records = _records()[:2]
        records[0]["epochs"][2]["hessian_relative_change"] = 0.5  # seed 0's last: void
        records[1]["epochs"][0]["hessian_relative_change"] = 0.05  # converged enough
        group = study_report.summarize(records)[("digits", "darts", "first_order")]
        np.testing.assert_allclose(group.curves["hessian_eigenvalue"][:, 0], [0.5, 1.0, np.nan])
        np.testing.assert_allclose(group.curves["hessian_eigenvalue"][:, 1], [1.5, 2.0, 2.5])
        self.assertEqual((group.void_eigenvalues, group.eigenvalues), (1, 6))
        row = next(
            line
            for line in study_report.markdown(
                {("digits", "darts", "first_order"): group}
            ).splitlines()
            if line.startswith("| first_order")
        )
        cells = [c.strip() for c in row.strip("|").split("|")]
        # Final eigenvalue: seed 1's only; the peak over epochs: seed 0's 1.0, seed 1's 2.5.
        self.assertEqual(cells[5], "2.500")
        self.assertEqual(cells[6], f"1.750 ± {np.std([1.0, 2.5], ddof=1):.3f}")
        self.assertEqual(cells[9], "1 of 6")

    def test_exact_permutation_p_values(self):
        # Of the 20 splits of 1..6 into threes, only {1,2,3} and {4,5,6} differ by 3 in mean.
        self.assertAlmostEqual(study_report.permutation_p([1, 2, 3], [4, 5, 6]), 2 / 20)
        self.assertAlmostEqual(study_report.permutation_p([4, 5, 6], [1, 2, 3]), 2 / 20)
        self.assertEqual(study_report.permutation_p([1, 2], [2, 1]), 1.0)
        # 1, 2 against 3, 4, 5: |mean difference| 2.5; of the C(5, 2) = 10 splits, {1, 2}
        # (2.5) and {4, 5} (|4.5 - 2| = 2.5) reach it.
        self.assertAlmostEqual(study_report.permutation_p([1, 2], [3, 4, 5]), 2 / 10)

    def test_collapse_onsets_comparison_and_uniform_shares(self):
        def genotype(free):
            edges = [("skip_connect" if e < free else "sep_conv_3x3", e % 2) for e in range(8)]
            cell = genotypes.CellGenotype.from_edges(edges, range(2, 6))
            return genotypes.Genotype((cell,), (cell,)).to_string()

        # first order: seed 0 collapsed (6 of 8) from epoch 8 of 10; seed 1 collapsed at
        # epochs 5-9 only (not the last tenth); amended: 2 of 8 throughout.
        histories = {
            "first_order-s0": [2] * 7 + [6, 7, 6],
            "first_order-s1": [2] * 4 + [6] * 5 + [5],
            "amended_0.1-s0": [2] * 10,
            "amended_0.1-s1": [2] * 10,
        }
        records = []
        for name, frees in histories.items():
            epochs = [
                {**_entry(e + 1, 0, 0.1 * free, 1.0, 0.8), "genotype": genotype(free)}
                for e, free in enumerate(frees)
            ]
            records.append(
                {
                    "run": f"digits-s3-{name}",
                    "search": {"epochs": 10, "search_space": "s3"},
                    "epochs": epochs,
                    "test_acc": 0.9 if "first" in name else 0.8 + 0.01 * int(name[-1]),
                }
            )
        summary = study_report.summarize(records)
        first = summary[("digits", "s3", "first_order")]
        self.assertEqual(study_report.collapse_onsets(first), [8, None])
        np.testing.assert_allclose(first.curves["parameter_free_normal"][:, 0], [2] * 7 + [6, 7, 6])
        self.assertEqual(first.uniform, {"skip_connect": 1 / 3, "pools": 0.0})
        table = study_report.markdown(summary)
        self.assertIn("| first_order | 1 of 2 | 8 |", table)
        self.assertIn("| amended_0.1 | 0 of 2 | — |", table)
        # amended - first order: normal parameter-free 2 - 5.5; skip mass 0.2 - 0.55; test
        # accuracy 0.805 - 0.9. Each with two seeds a side: every split of four values into
        # twos, 6 of them; the observed one and its mirror are the most extreme: p = 2/6.
        row = next(line for line in table.splitlines() if line.startswith("| amended_0.1 | -"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        self.assertEqual(cells[1], "-3.50 (p = 0.33)")
        self.assertEqual(cells[2], "-0.350 (p = 0.33)")
        self.assertEqual(cells[3], "+0.000 (p = 1.00)")
        self.assertEqual(cells[4], "-0.0950 (p = 0.33)")
        darts = study_report.summarize(
            [{**records[0], "search": {"epochs": 10, "search_space": "darts"}}]
        )
        self.assertEqual(
            next(iter(darts.values())).uniform, {"skip_connect": 1 / 8, "pools": 2 / 8}
        )
        # S1: each normal edge its own two candidates; skip_connect is one of the two on 12
        # of the 14 normal edges, max_pool_3x3 on 2.
        s1 = study_report.summarize(
            [{**records[0], "search": {"epochs": 10, "search_space": "s1"}}]
        )
        self.assertEqual(
            next(iter(s1.values())).uniform, {"skip_connect": 12 / 28, "pools": 2 / 28}
        )
        with tempfile.TemporaryDirectory() as tmp:
            paths = study_report.plot(summary, tmp)
            self.assertIn(os.path.join(tmp, "pool_mass_normal.png"), paths)

    def test_write_report_writes_the_tables_and_pngs(self):
        with tempfile.TemporaryDirectory() as tmp:
            records_dir = os.path.join(tmp, "records")
            _write_records(records_dir)
            paths = study_report.write_report(records_dir, os.path.join(tmp, "out"))
            self.assertEqual(
                sorted(os.path.basename(p) for p in paths),
                [
                    "hessian_eigenvalue.png",
                    "parameter_free_normal.png",
                    "parameter_free_ops.png",
                    "pool_mass_normal.png",
                    "report.md",
                    "skip_mass_normal.png",
                    "test_acc.png",
                ],
            )
            for path in paths:
                with open(path, "rb") as f:
                    head = f.read(8)
                self.assertEqual(head[:4] == b"\x89PNG", path.endswith(".png"))
            self.assertEqual(
                sorted(os.listdir(os.path.join(tmp, "out"))),
                sorted(os.path.basename(p) for p in paths),
            )  # no temporary files left behind

    def test_bad_records_are_one_input_error(self):
        with tempfile.TemporaryDirectory() as tmp:
            with self.assertRaisesRegex(errors.InputError, "no study records"):
                study_report.load_records(tmp)
            with open(os.path.join(tmp, "x.json"), "w") as f:
                f.write("{")
            with self.assertRaisesRegex(errors.InputError, "x.json"):
                study_report.load_records(tmp)
        with self.assertRaisesRegex(errors.InputError, "expected <dataset>"):
            study_report.summarize([{"run": "no-seed", "search": {"epochs": 1}, "epochs": []}])

    def test_study_binary_report_only(self):
        """bin/study --report_only draws the report from <output_dir>/records, runs nothing;
        without records: one line on stderr, exit 2 (errors.InputError)."""
        command = [sys.executable, "-m", "tf_amended_darts.bin.study", "--report_only"]
        plan = "--plan=" + os.path.join(ROOT, "studies", "collapse.json")
        with tempfile.TemporaryDirectory() as tmp:
            done = subprocess.run(
                command + [plan, f"--output_dir={tmp}"], capture_output=True, text=True, cwd=ROOT
            )
            self.assertEqual(done.returncode, 2, done.stderr)
            self.assertEqual(len(done.stderr.strip().splitlines()), 1, done.stderr)
            self.assertIn("no study records", done.stderr)
            _write_records(os.path.join(tmp, "records"))
            done = subprocess.run(
                command + [plan, f"--output_dir={tmp}"], capture_output=True, text=True, cwd=ROOT
            )
            self.assertEqual(done.returncode, 0, done.stderr)
            self.assertIn("report.md", done.stdout)
            with open(os.path.join(tmp, "report", "report.md")) as f:
                self.assertIn("| first_order | 2/3 |", f.read())
            self.assertNotIn("runs", os.listdir(tmp))  # nothing was searched


if __name__ == "__main__":
    unittest.main()
