"""The diagnose binary, run as a user runs it, on a tiny supernet (the trace of the implicit
reference dominates: ~1-2 min on 2 cores)."""

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def diagnose(*flags):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "tf_amended_darts.bin.diagnose", *flags],
                          capture_output=True, text=True, env=env, timeout=1200, cwd=ROOT)


def test_json_on_a_tiny_supernet():
    out = diagnose("--layers=3", "--init_channels=2", "--steps=1", "--batch_size=8",
                   "--estimators=first_order", "--cg_iterations=1", "--warmup_steps=1",
                   "--repeats=1", "--format=json")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)  # one JSON object
    assert set(d["estimators"]) == {"implicit", "first_order"}
    assert d["cosine"]["implicit"]["implicit"] == pytest.approx(1.0, abs=1e-6)
    assert d["estimators"]["implicit"]["cosine_to_implicit"] == pytest.approx(1.0, abs=1e-6)
    assert d["estimators"]["first_order"]["correction_norm"] == 0.0
    for r in d["estimators"].values():
        for key in ("g1_norm", "correction_norm", "total_norm", "seconds_per_call",
                    "first_call_seconds", "cosine_to_implicit"):
            assert math.isfinite(r[key]), (key, r)
    assert "checkpoints not supported" in d["config"]["weights"]


@pytest.mark.parametrize("flag", ["--estimators=third_order", "--batch_size=0"])
def test_bad_flag_is_one_line_and_exit_2(flag):
    out = diagnose(flag)
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
