#!/usr/bin/env bash
# Mutation testing, on demand (not in CI): mutmut changes the modules where a silent bug loses
# data (the list, [tool.mutmut] only_mutate in pyproject.toml) one small change at a time and
# runs the fast, Docker-free tests that cover each change; a change no test notices is a
# "survivor". Every survivor is killed by a test or explained in tests/MUTANTS.md.
#   bash scripts/mutation.sh                      # all modules
#   bash scripts/mutation.sh 'ailab_backup_ext.plan*'   # one module (mutant names are globs)
# JOBS (default 1) sets how many mutants run at once. Results: mutants/ (mutmut browse).
set -euo pipefail
PROJECT=$(cd "$(dirname "$0")/.." && pwd)
VENV="${VENV:-$PROJECT/.venv}"
cd "$PROJECT"
"$VENV/bin/python" -c 'import mutmut' 2>/dev/null || "$VENV/bin/python" -m pip install -q -e ".[test,mutation]"
# the fast tests only: no Docker engine (Docker tests skip), and the mutated copy in mutants/,
# not an installed or PYTHONPATH one, is what the tests import
export DOCKER_HOST=unix:///nonexistent/ailab-mutation.sock
unset PYTHONPATH
"$VENV/bin/mutmut" run --max-children "${JOBS:-1}" "$@"
"$VENV/bin/mutmut" results --all false 2>/dev/null | grep -Ev ': (killed|not checked)$' || true
"$VENV/bin/python" - "$@" <<'PY'
# the score over the mutants of this run (the names given, or all); "no tests": no fast test runs
# that code (Docker-only code), counted as not killed
import fnmatch, json, pathlib, sys
from mutmut.stats import status_by_exit_code
patterns = sys.argv[1:] or ["*"]
counts = {}
for meta in pathlib.Path("mutants").rglob("*.meta"):
    for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
        if any(fnmatch.fnmatch(name, p) for p in patterns):
            status = status_by_exit_code[code]
            counts[status] = counts.get(status, 0) + 1
checked = sum(n for s, n in counts.items() if s != "not checked")
killed = counts.get("killed", 0) + counts.get("timeout", 0)
print("mutants:", dict(sorted(counts.items())))
print(f"score: {killed}/{checked} killed = {100 * killed / max(1, checked):.1f} %")
reached = checked - counts.get("no tests", 0)  # Docker-only code aside (the Docker tests cover it)
print(f"of the code the fast tests run: {killed}/{reached} killed = {100 * killed / max(1, reached):.1f} %")
PY
