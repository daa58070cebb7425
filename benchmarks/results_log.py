"""What every benchmark binary writes into benchmarks/RESULTS.md: its result table as Markdown
under a heading with the date (UTC), the load average and the git commit of the measured
checkout, and the exact command line, appended atomically (temporary file + rename).

    _RESULTS = results_log.define_results_flag()
    ...
    run = results_log.start_run()           # before measuring: date, load, commit, command
    ...
    if _RESULTS.value:
        results_log.append_section(_RESULTS.value, run, table)
"""

import dataclasses
import datetime
import os
import shlex
import subprocess
import sys

import search_timing  # first: puts this checkout's package on sys.path
from absl import flags

from tf_amended_darts import io_utils


def define_results_flag():
    """Defines --results (a path; default: print only) and returns its holder."""
    return flags.DEFINE_string(
        "results",
        None,
        "Also append the result table as Markdown to this file (e.g. benchmarks/RESULTS.md), "
        "under a heading with the date (UTC), the load average at start and end, the git "
        "commit and the command line. Default: print only.",
    )


@dataclasses.dataclass(frozen=True)
class Run:
    """A benchmark run's circumstances, taken when it starts."""

    started: datetime.datetime  # UTC
    load_at_start: tuple  # os.getloadavg(): 1, 5 and 15 minutes
    commit: str  # of the measured checkout; "+ changes" when its tree differs from the commit
    argv: tuple  # the script and its arguments

    @property
    def command(self):
        return shlex.join(["python", *self.argv])


def git_commit(directory=search_timing.ROOT):
    """The checkout's commit (short hash, "+ changes" when files differ), or "unknown"."""

    def git(*args):
        return subprocess.run(
            ["git", "-C", directory, *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit} + changes" if changed else commit


def start_run(argv=None):
    """The Run of this process: now, the load average, the commit, `argv` (default sys.argv)."""
    return Run(
        started=datetime.datetime.now(datetime.timezone.utc),
        load_at_start=os.getloadavg(),
        commit=git_commit(),
        argv=tuple(sys.argv if argv is None else argv),
    )


def _load(average):
    return " ".join(f"{x:.2f}" for x in average)


def section(run, table, load_at_end=None):
    """The Markdown section of one run: heading, command, `table` (Markdown text)."""
    load_at_end = os.getloadavg() if load_at_end is None else load_at_end
    return (
        f"### {run.started:%Y-%m-%d %H:%M} UTC, {os.path.basename(run.argv[0])}, "
        f"load {_load(run.load_at_start)} -> {_load(load_at_end)}, commit {run.commit}\n\n"
        f"```sh\n{run.command}\n```\n\n{table.strip()}\n"
    )


def append_section(path, run, table, load_at_end=None):
    """Appends `section(run, table)` to `path` (created if missing) atomically: a reader, or
    a benchmark killed while writing, sees the file before or after, never half of it."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    if text and not text.endswith("\n"):
        text += "\n"
    text += ("\n" if text else "") + section(run, table, load_at_end)
    io_utils.write_atomic(path, text)
