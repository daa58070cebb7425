#!/usr/bin/env bash
# Formatter check and linter over the whole checkout, as CI runs them (configuration:
# [tool.ruff] in pyproject.toml; ruff is pinned in requirements.txt). `ruff format .` and
# `ruff check --fix .` repair most findings.
set -euo pipefail
cd "$(dirname "$0")/.."
ruff format --check .
ruff check .
