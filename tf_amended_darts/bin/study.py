"""Runs (or continues) a study plan: every search of the plan, recorded per epoch, and the
re-training of each derived genotype (tf_amended_darts/study.py). Run it again to continue
after an interruption; finished runs are skipped.

  python -m tf_amended_darts.bin.study --plan=studies/collapse.json --output_dir=runs/collapse
"""

import json

from absl import flags

from tf_amended_darts.bin import cli

_PLAN = flags.DEFINE_string("plan", None, "The study plan (JSON; see tf_amended_darts/study.py).")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where the runs and records go.")
_STOP_AFTER_STEPS = flags.DEFINE_integer(
    "stop_after_steps", None, "Stop each search/training at this global step (continue later)."
)
flags.mark_flags_as_required(["plan", "output_dir"])
cli.validate_flags(globals().values())


def main(argv):
    del argv
    from tf_amended_darts import study  # pylint: disable=g-import-not-at-top

    records = study.run_study(
        study.load_plan(_PLAN.value), _OUTPUT_DIR.value, stop_after_steps=_STOP_AFTER_STEPS.value
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
