#!/usr/bin/env bash
# Run `bazel test` offline with Debian's bazel-bootstrap (Bazel 4.2.3).
#
#   tools/bazel_test.sh [bazel test arguments and targets...]
#
# Without arguments: --test_tag_filters=bazel_ci //:all (what CI runs: build every target,
# run the tests tagged "bazel_ci"; see the top of BUILD).
#
# Needs: `bazel` on PATH and the package bazel-bootstrap-source (its mock_repos folder
# stands in for rules_cc, platforms, bazel_skylib, rules_java, ... which plain Bazel would
# download), i.e. `apt-get install -y bazel-bootstrap bazel-bootstrap-source`; and a Python
# with requirements.txt installed first on PATH (e.g. `. .venv/bin/activate`): the
# sandboxed py_test runs the `python3` it finds on PATH.
#
# Environment: BAZEL_JOBS (default: number of cores, at most 2) caps --jobs and
# --local_cpu_resources. BAZEL_STARTUP_OPTS: extra startup options (e.g.
# --output_user_root=DIR). Set BAZEL_SHUTDOWN=1 to stop the Bazel server afterwards (CI).
set -euo pipefail

cd "$(dirname "$0")/.."

command -v bazel >/dev/null || {
  echo "bazel_test.sh: bazel not found (apt-get install -y bazel-bootstrap bazel-bootstrap-source)" >&2
  exit 2
}
M=
if command -v dpkg >/dev/null; then
  # (no grep -m1: with pipefail, dpkg's SIGPIPE would fail the pipeline)
  M=$(dpkg -L bazel-bootstrap-source 2>/dev/null | grep '/mock_repos$' | sed -n 1p || true)
fi
if [[ -z "$M" || ! -d "$M" ]]; then
  echo "bazel_test.sh: the mock_repos folder of bazel-bootstrap-source was not found" \
       "(apt-get install -y bazel-bootstrap-source)" >&2
  exit 2
fi

# Stand-in for @remote_coverage_tools (the only repository the mock_repos do not cover).
STUB=$(mktemp -d "${TMPDIR:-/tmp}/remote_coverage_tools.XXXXXX")
trap 'rm -rf "$STUB"' EXIT
: > "$STUB/WORKSPACE"
cat > "$STUB/BUILD" <<'EOF'
filegroup(name = "coverage_report_generator", srcs = [], visibility = ["//visibility:public"])
EOF

overrides=()
for r in "$M"/*/; do
  r=${r%/}
  overrides+=("--override_repository=$(basename "$r")=$r")
done
overrides+=("--override_repository=remote_coverage_tools=$STUB")

cores=$(nproc 2>/dev/null || echo 2)
jobs=${BAZEL_JOBS:-$(( cores < 2 ? cores : 2 ))}

if [[ $# -eq 0 ]]; then
  set -- --test_tag_filters=bazel_ci //:all
fi

echo "bazel_test.sh: python3 on PATH: $(command -v python3 || echo none)"
status=0
# shellcheck disable=SC2086  # BAZEL_STARTUP_OPTS is a word list on purpose
bazel ${BAZEL_STARTUP_OPTS:-} test \
  "${overrides[@]}" \
  --jobs="$jobs" --local_cpu_resources="$jobs" --local_ram_resources=HOST_RAM*.5 \
  --test_output=errors --noshow_progress --curses=no --color=no \
  "$@" < /dev/null || status=$?

if [[ "${BAZEL_SHUTDOWN:-0}" == 1 ]]; then
  # shellcheck disable=SC2086
  bazel ${BAZEL_STARTUP_OPTS:-} shutdown < /dev/null || true
fi
exit "$status"
