"""Runs (or continues) a study plan: every search of the plan, recorded per epoch, and the
re-training of each derived genotype (tf_amended_darts/study.py). Run it again to continue
after an interruption; finished runs are skipped. At the end it draws the study's report
(tables and plots, tf_amended_darts/study_report.py) from the records; --report_only draws it
without running anything (the records committed under docs/study/ redraw docs/STUDY.md's
figures that way). Each run of several runs in a process of its own (this binary again, with
--runs=<that run>), so that the memory of one run's models and traced functions is returned
before the next.

  python -m tf_amended_darts.bin.study --plan=studies/collapse.json --output_dir=runs/collapse \
      --nograppler
  # two processes sharing the plan (e.g. one per core):
  python -m tf_amended_darts.bin.study ... --runs='*-darts-*' &
  python -m tf_amended_darts.bin.study ... --runs='*-enlarged-*'
  python -m tf_amended_darts.bin.study --plan=studies/collapse.json --output_dir=docs/study \
      --report_only --report_dir=docs/study
"""

import ctypes
import glob
import json
import os
import signal
import subprocess
import sys

from absl import flags

import tf_amended_darts
from tf_amended_darts import options
from tf_amended_darts.bin import cli

# Every flag is a declared option (options.StudyOptions).
_STUDY = cli.define_flags(options.StudyOptions)
flags.mark_flags_as_required(["plan", "output_dir"])


def main(argv):
    del argv
    from tf_amended_darts import study, study_report  # pylint: disable=g-import-not-at-top

    output_dir = _STUDY["output_dir"].value
    plan = study.load_plan(_STUDY["plan"].value)
    report_dir = _STUDY["report_dir"].value or os.path.join(output_dir, "report")
    if not _STUDY["report_only"].value:
        _run(plan, output_dir)
    if not (_STUDY["report"].value or _STUDY["report_only"].value):
        return
    for path in study_report.write_report(
        os.path.join(output_dir, "records"),
        report_dir,
        planned_seeds=len(plan.get("seeds", [0])),
    ):
        print(f"wrote {path}")


def _run(plan, output_dir):
    from tf_amended_darts import study  # pylint: disable=g-import-not-at-top

    names = [p.name for p in study.planned_runs(plan, _STUDY["runs"].value)]
    if len(names) == 1:
        _run_here(plan, output_dir)
        return
    # A process keeps memory of the models and traced functions it has built: a study process
    # grew from 785 to 859, 927, 1046 MB over four tiny amended searches (measured;
    # keras.backend.clear_session and gc did not return it). A process per run gives it back.
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(tf_amended_darts.__file__)))
    if root not in [os.path.abspath(p or os.curdir) for p in sys.path]:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    preexec = _end_with_parent()
    for index, name in enumerate(names):
        command = [
            sys.executable,
            "-m",
            "tf_amended_darts.bin.study",
            f"--plan={_STUDY['plan'].value}",
            f"--output_dir={output_dir}",
            f"--runs={glob.escape(name)}",  # names hold no comma (study.planned_runs)
            "--grappler" if _STUDY["grappler"].value else "--nograppler",
            "--noreport",
        ]
        if _STUDY["stop_after_steps"].value is not None:
            command.append(f"--stop_after_steps={_STUDY['stop_after_steps'].value}")
        if flags.FLAGS["verbosity"].present:
            command.append(f"--verbosity={flags.FLAGS.verbosity}")
        child = subprocess.Popen(command, env=env, preexec_fn=preexec)
        print(f"study: run {index + 1}/{len(names)} {name} (process {child.pid})", flush=True)
        try:
            status = child.wait()
        except KeyboardInterrupt:  # Ctrl-C reaches the child too: let it stop, then stop
            child.wait()
            sys.exit(130)
        if status < 0:  # killed by a signal (the OOM killer: SIGKILL), so it said nothing
            print(f"study: run {name} ended by signal {-status}", file=sys.stderr)
            sys.exit(128 - status)
        if status:  # the child has said why (one line, or a bug's traceback)
            sys.exit(status)


def _end_with_parent():
    """What the child calls before it runs: on Linux, to get SIGTERM when the study process
    ends, however it ends (kill -9 too), so that no orphan goes on holding its run's lock; if
    the study process ended before that, the child stops. Resolved here, in the parent: the
    child calls it between fork and exec, where loading a library could deadlock."""
    if not sys.platform.startswith("linux"):
        return None
    prctl, parent = ctypes.CDLL(None, use_errno=True).prctl, os.getpid()

    def end_with_parent():
        prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)

    return end_with_parent


def _run_here(plan, output_dir):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    from tf_amended_darts import study  # pylint: disable=g-import-not-at-top

    tf.config.optimizer.set_experimental_options(
        {"disable_meta_optimizer": not _STUDY["grappler"].value}
    )
    records = study.run_study(
        plan,
        output_dir,
        runs=_STUDY["runs"].value,
        stop_after_steps=_STUDY["stop_after_steps"].value,
    )
    for record in records:
        last = record["epochs"][-1] if record["epochs"] else {}
        print(
            json.dumps(
                {
                    "run": record["run"],
                    "epochs": len(record["epochs"]),
                    "parameter_free_ops": last.get("parameter_free_ops"),
                    "hessian_eigenvalue": last.get("hessian_eigenvalue"),
                    "test_acc": record.get("test_acc"),
                }
            )
        )


if __name__ == "__main__":
    cli.run(main)
