#!/usr/bin/env bash
# Mutation testing, on demand (not in CI): mutmut changes the modules where a silent bug loses
# data (the list, [tool.mutmut] only_mutate in pyproject.toml) one small change at a time and
# runs the fast, Docker-free tests that cover each change; a change no test notices is a
# "survivor". Every survivor is killed by a test or explained in tests/MUTANTS.md.
#   bash scripts/mutation.sh                      # all modules
#   bash scripts/mutation.sh 'ailab_backup_ext.plan*'   # one module (mutant names are globs)
# JOBS (default 1) sets how many mutants run at once. Results: mutants/ (mutmut browse).
# MUTATION_TESTS (optional) replaces the fast tests of pyproject.toml for this run: pytest
# arguments (test files, node ids, --deselect ...), or @FILE to read them from FILE, one or more a
# line, '#' comments; e.g. MUTATION_TESTS=@tests/mutation-archive.args for the archive reader,
# whose mutants each run ~800 fast tests otherwise. mutmut forgets every earlier result in
# mutants/ when the test selection changes (so alternating selections starts over each time), and
# a mutant that survives a restricted selection may still be killed by tests outside it: check
# survivors against the full relevant tests (tests/MUTANTS.md says how) before calling them
# survivors.
set -euo pipefail
PROJECT=$(cd "$(dirname "$0")/.." && pwd)
VENV="${VENV:-$PROJECT/.venv}"
cd "$PROJECT"
"$VENV/bin/python" -c 'import mutmut' 2>/dev/null || "$VENV/bin/python" -m pip install -q -e ".[test,mutation]"
# the fast tests only: no Docker engine (Docker tests skip), and the mutated copy in mutants/,
# not an installed or PYTHONPATH one, is what the tests import. MUTATION_DOCKER=1 keeps the
# engine and runs the Docker tests of the selection (for Docker-only code such as VolumeStore:
# MUTATION_TESTS=@tests/mutation-volume-store.args); their helpers must not run our code (the
# mutated copy needs mutmut, which a helper image lacks), so only the streaming path's tests.
if [ "${MUTATION_DOCKER:-0}" = 1 ]; then
    export AILAB_BACKUP_HELPER_IMAGE="${AILAB_BACKUP_HELPER_IMAGE:-ailab-backup-helper:test}"
else
    export DOCKER_HOST=unix:///nonexistent/ailab-mutation.sock
fi
unset PYTHONPATH
if [ -n "${MUTATION_TESTS:-}" ]; then
    # mutmut has no option for it: its configuration is read from pyproject.toml, and this
    # replaces only the test selection it read before the run starts
    "$VENV/bin/python" - "$MUTATION_TESTS" run --max-children "${JOBS:-1}" "$@" <<'PY'
import os, shlex, sys
import mutmut.configuration as configuration
spec = sys.argv.pop(1)
if spec.startswith("@"):
    with open(spec[1:]) as f:
        selection = [arg for line in f for arg in shlex.split(line, comments=True)]
else:
    selection = shlex.split(spec)
if not selection:
    sys.exit(f"MUTATION_TESTS={spec!r} names no tests")
load = configuration._load_config
def _load_config():
    config = load()
    config.pytest_add_cli_args_test_selection = selection
    if os.environ.get("MUTATION_DOCKER") == "1":  # the Docker tests too
        args = config.pytest_add_cli_args
        config.pytest_add_cli_args = [a for i, a in enumerate(args)
                                      if a != "-m" and not (i and args[i - 1] == "-m")]
    return config
configuration._load_config = _load_config
print("test selection (MUTATION_TESTS):", " ".join(selection))
from mutmut.__main__ import cli
sys.argv[0] = "mutmut"
cli()
PY
else
    "$VENV/bin/mutmut" run --max-children "${JOBS:-1}" "$@"
fi
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
