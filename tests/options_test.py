"""One definition per option: every flag of the search, train and tune binaries is derived
from exactly one declared option (tf_amended_darts/options.py, SearchConfig, TrainConfig),
with its default and help; no binary defines a flag of its own; an option that the search and
the training both have is checked alike; the committed study plans use the declared names."""

import glob
import json
import os
import re
import subprocess
import sys

import pytest

from tf_amended_darts import diagnostics, options, search, study, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = [n for n in options.declared(options.RunOptions) if n != "export_dir"]
# What each binary's flags come from: (dataclass, option names or None for all, flag prefix,
# defaults in place of the declared ones).
SOURCES = {
    "search": [
        (options.RunOptions, RUN, "", {}),
        (options.SearchMeasures, None, "", {}),
        (search.SearchConfig, None, "", {}),
    ],
    "train": [(options.RunOptions, None, "", {}), (train.TrainConfig, None, "", {})],
    "tune": [
        (options.TuneOptions, None, "", {}),
        (search.SearchConfig, None, "", {}),
        (train.TrainConfig, list(options.TRIAL_DEFAULTS), "eval_", options.TRIAL_DEFAULTS),
    ],
    "diagnose": [(diagnostics.DiagnoseConfig, None, "", {}), (options.OutputOptions, None, "", {})],
    "study": [(options.StudyOptions, None, "", {})],
}
_PRINT_FLAGS = """
import importlib, json, sys
from absl import flags
module = importlib.import_module("tf_amended_darts.bin." + sys.argv[1])
defined = flags.FLAGS.get_flags_for_module(module.__name__)
print(json.dumps({f.name: [f.default, f.help] for f in defined}))
"""


def _binary_flags(binary):
    out = subprocess.run(
        [sys.executable, "-c", _PRINT_FLAGS, binary],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _flag_default(field, defaults):
    default = defaults.get(field.name, field.default)
    if field.metadata["kind"] == "mixed_precision":
        return default or "off"
    if isinstance(default, tuple):
        return list(default)
    if field.metadata["kind"] == "string" and default is not None:
        return str(default)
    return default


@pytest.mark.parametrize("binary", sorted(SOURCES))
def test_every_flag_is_one_declared_option(binary):
    with open(os.path.join(ROOT, "tf_amended_darts", "bin", binary + ".py")) as f:
        assert "DEFINE_" not in f.read(), f"bin/{binary}.py defines a flag of its own"
    found = _binary_flags(binary)
    declared = {}
    for cls, names, prefix, defaults in SOURCES[binary]:
        fields = options.declared(cls)
        for name in fields if names is None else names:
            declared.setdefault(prefix + name, []).append((fields[name], defaults))
    assert sorted(found) == sorted(declared)
    for flag, (default, help_text) in found.items():
        assert len(declared[flag]) == 1, f"--{flag} of bin/{binary} is declared twice"
        field, defaults = declared[flag][0]
        assert help_text.endswith(field.metadata["help"]), flag  # enums: "<a|b>: help"
        assert default == _flag_default(field, defaults), flag


@pytest.mark.parametrize("binary", sorted(SOURCES))
def test_help_lists_every_flag(binary):
    # absl lists the main module's flags under its path, not "__main__".
    out = subprocess.run(
        [sys.executable, "-m", "tf_amended_darts.bin." + binary, "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )  # absl's --help exits with status 1
    listed = set(re.findall(r"^  --(?:\[no\])?(\w+):", out.stdout, re.M))
    assert sorted(set(_binary_flags(binary)) - listed) == []


def test_diagnose_options_of_a_search_are_the_search_declarations():
    searched = {**options.declared(search.SearchConfig), **options.declared(options.SearchMeasures)}
    shared = set(options.declared(diagnostics.DiagnoseConfig)) & set(searched)
    assert {
        "search_space",
        "amending_coefficient",
        "implicit_iterations",
        "cosines_damping",
    } <= shared
    for name in shared:  # options.same_as: the very declaration, another default at most
        assert (
            options.declared(diagnostics.DiagnoseConfig)[name].metadata == searched[name].metadata
        )


def test_an_option_of_the_search_and_the_training_is_checked_alike():
    searched, trained = options.declared(search.SearchConfig), options.declared(train.TrainConfig)
    shared = sorted(set(searched) & set(trained))
    assert {"dataset", "seed", "batch_size", "learning_rate", "mixed_precision"} <= set(shared)
    for name in shared:
        a, b = searched[name].metadata, trained[name].metadata
        assert a["kind"] == b["kind"], name
        assert (a["rule"] and a["rule"].message) == (b["rule"] and b["rule"].message), name


def test_declared_checks_refuse_in_the_library_naming_the_option():
    from tf_amended_darts import errors  # pylint: disable=g-import-not-at-top

    for cls, kwargs, message in (
        (search.SearchConfig, {"seed": -1}, r"seed must be an integer in \[0, 4294967295\]"),
        (search.SearchConfig, {"channels": 0}, "channels must be at least 1, got 0"),
        (search.SearchConfig, {"products": "fd"}, "products must be one of exact"),
        (train.TrainConfig, {"genotype": "DARTS_V2", "lr_schedule": "step"}, "lr_schedule must"),
    ):
        with pytest.raises(errors.InputError, match=message):
            cls(**kwargs)


def test_committed_study_plans_use_the_declared_names():
    searched, trained = options.declared(search.SearchConfig), options.declared(train.TrainConfig)
    plans = sorted(glob.glob(os.path.join(ROOT, "studies", "*.json")))
    assert plans
    for path in plans:
        plan = study.load_plan(path)
        assert study.planned_runs(plan)  # every search field a SearchConfig option
        assert set(plan.get("retrain") or {}) <= set(trained), path
        for overrides in [plan.get("search", {}), *plan["estimators"].values()]:
            assert set(overrides) <= set(searched), path
        cosines = set(plan.get("cosines", {})) - {"every"}
        assert cosines <= set(diagnostics.COSINE_SETTINGS), (path, cosines)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
