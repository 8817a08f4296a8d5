#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian 12 machine: installs what is missing (apt, pip, npm),
# starts Docker when none runs, builds the local helper image, runs the sidebar's unit tests and
# then pytest (arguments pass on to pytest).
source "$(dirname "$0")/setup.sh"
apt_install chromium chromium
apt_install age age   # the age reference (Go): what it encrypts, restores decrypt (tests/test_age_stream.py)
setup_python test
if start_docker; then
    build_helper_image --fresh
else
    echo "################################################################" >&2
    echo "# NO DOCKER ENGINE: the Docker tests will be SKIPPED            #" >&2
    echo "################################################################" >&2
fi
cd "$PROJECT"
# the sidebar's unit tests (its node_modules came with the install above, which built it)
(cd labextension && { [ -d node_modules ] || npm install --no-audit --no-fund; } && npm test)
exec "$VENV/bin/python" -m pytest -p no:cacheprovider "$@"
