"""bin/cli.py in-process: bad input is one line and exit 2, a bug keeps its traceback, and
the per-flag checks every binary registers refuse what cannot run."""

import contextlib
import dataclasses
import io
import sys
from unittest import mock

from absl import flags
from absl.testing import absltest, flagsaver

from tf_amended_darts import distribute, errors, genotypes, loop, options
from tf_amended_darts.bin import cli


def _run(main, *args):
    """(SystemExit code or the exception raised, stderr) of cli.run(main) on no flags and
    the command-line arguments `args`."""
    stderr = io.StringIO()
    with (
        flagsaver.flagsaver(),
        mock.patch.object(sys, "argv", ["prog", *args]),
        contextlib.redirect_stderr(stderr),
    ):
        try:
            cli.run(main)
            outcome = None
        except SystemExit as e:
            outcome = e.code
        except Exception as e:  # pylint: disable=broad-except
            outcome = e
    return outcome, stderr.getvalue()


class RunTest(absltest.TestCase):
    def test_bad_input_is_one_line_and_exit_2(self):
        def main(argv):
            del argv
            genotypes.load_genotype(
                "Genotype(normal=[('skip_connect', 0)], normal_concat=2.5, "
                "reduce=[('skip_connect', 0)], reduce_concat=[2])"
            )

        code, stderr = _run(main)
        self.assertEqual(code, 2)
        self.assertEqual(stderr.count("\n"), 1, stderr)
        self.assertIn("prog: error: genotype: normal: concat must be a list", stderr)

    def test_a_stray_argument_is_one_line_and_exit_2(self):
        ran = []
        code, stderr = _run(ran.append, "extra")
        self.assertEqual(code, 2)
        self.assertEqual(stderr.count("\n"), 1, stderr)
        self.assertIn("prog: error: unexpected arguments: extra", stderr)
        self.assertEqual(ran, [])

    def test_a_bug_keeps_its_traceback(self):
        # A library function failing with a plain ValueError is a bug, not bad input: absl's
        # app.run re-raises it (Python prints the traceback, exit status 1).
        for error in (ValueError("internal"), OSError("internal"), TypeError("internal")):
            with self.subTest(error=type(error).__name__):
                with mock.patch.object(genotypes, "load_genotype", side_effect=error):
                    outcome, stderr = _run(lambda argv: genotypes.load_genotype("DARTS_V2"))
                self.assertIs(outcome, error)
                self.assertNotIn("error: internal", stderr)


class MixedPrecisionTest(absltest.TestCase):
    def test_auto_is_float16_on_a_gpu_else_bfloat16(self):
        import tensorflow as tf  # pylint: disable=g-import-not-at-top

        self.assertEqual(
            [cli.mixed_precision(v) for v in ("off", "float16", "bfloat16")],
            [None, "float16", "bfloat16"],
        )
        gpus = [tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU")]
        for devices, dtype in (([], "bfloat16"), (gpus, "float16")):
            with mock.patch.object(tf.config, "list_physical_devices", return_value=devices):
                self.assertEqual(cli.mixed_precision("auto"), dtype)


class FlagRulesTest(absltest.TestCase):
    def _parse(self, define, name, value):
        """Defines flag `name` in a fresh FlagValues, registers cli's checks, parses value."""
        values = flags.FlagValues()
        holder = define(name, None, "test flag", flag_values=values)
        cli.validate_flags([holder, "not a flag"])
        values(["prog", f"--{name}={value}"])
        return holder.value

    def test_values_that_cannot_run_are_refused_naming_the_flag(self):
        for define, name, value, message in (
            (flags.DEFINE_integer, "logical_cpus", "0", "must be an integer >= 1"),
            (flags.DEFINE_integer, "logical_cpus", "-3", "must be an integer >= 1"),
            (flags.DEFINE_integer, "seed", "-1", "must be an integer in \\[0, 4294967295\\]"),
            (flags.DEFINE_integer, "cells", "2", "must be an integer >= 3"),
            (flags.DEFINE_integer, "checkpoint_every", "-1", "must be an integer >= 0"),
            (flags.DEFINE_string, "dataset", "", "must not be empty"),
            (flags.DEFINE_string, "output_dir", " ", "must not be empty"),
            (flags.DEFINE_string, "strategy", "mirored", "must be one of auto, "),
            (flags.DEFINE_float, "learning_rate", "nan", "must be a finite number >= 0"),
            (flags.DEFINE_float, "grad_clip", "-1", "must be a finite number >= 0"),
            (flags.DEFINE_float, "train_portion", "1", "must be in \\(0, 1\\)"),
            (flags.DEFINE_float, "drop_path", "1", "must be in \\[0, 1\\)"),
            (flags.DEFINE_float, "fd_radius", "0", "must be a finite number > 0"),
            (flags.DEFINE_string, "amending_coefficient", "-1", "must be auto or a finite"),
            (flags.DEFINE_string, "amending_coefficient", "Auto", "must be auto or a finite"),
            (flags.DEFINE_string, "amending_coefficient", "inf", "must be auto or a finite"),
            (flags.DEFINE_float, "amending_coefficient", "-0.5", "must be auto or a finite"),
        ):
            with self.subTest(flag=name, value=value):
                with self.assertRaisesRegex(
                    flags.IllegalFlagValueError, f"flag --{name}=.*: {message}"
                ):
                    self._parse(define, name, value)

    def test_usable_values_pass(self):
        self.assertEqual(self._parse(flags.DEFINE_integer, "seed", "4294967295"), 2**32 - 1)
        self.assertEqual(self._parse(flags.DEFINE_float, "train_portion", "0.5"), 0.5)
        self.assertEqual(self._parse(flags.DEFINE_string, "arch_gradient", "amended"), "amended")
        self.assertEqual(self._parse(flags.DEFINE_float, "drop_path", "0"), 0.0)
        # bin/search's is a string (a number or auto), bin/tune's a float: one rule serves both.
        for value in ("auto", "0", "10"):
            self.assertEqual(self._parse(flags.DEFINE_string, "amending_coefficient", value), value)
        self.assertEqual(self._parse(flags.DEFINE_float, "amending_coefficient", "0.3"), 0.3)

    def test_library_refuses_logical_cpus_below_one(self):
        for count in (0, -3):
            with self.assertRaisesRegex(errors.InputError, "^logical_cpus must be at least 1"):
                distribute.configure_logical_cpus(count)


class RunControlTest(absltest.TestCase):
    def test_run_control_passes_run_options_that_are_run_control_fields(self):
        run_options = {f.name for f in dataclasses.fields(options.RunOptions)}
        control = {f.name for f in dataclasses.fields(loop.RunControl)}
        self.assertEqual(set(cli.RUN_CONTROL), run_options & control)
        run = {name: object() for name in run_options}
        self.assertEqual(cli.run_control(run), {name: run[name] for name in cli.RUN_CONTROL})


if __name__ == "__main__":
    absltest.main()
