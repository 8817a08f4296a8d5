# Sourced by lab.sh and test.sh: installs what a fresh Debian 12 machine lacks (as root), makes
# the virtual environment .venv with the extension installed, and starts Docker on request.
set -euo pipefail
PROJECT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$PROJECT/.venv"
HELPER_IMAGE_BUILT=ailab-backup-helper:test

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {  # apt_install COMMAND-OR-PATH PACKAGE ...: installs the packages when the first is missing
    local probe=$1; shift
    if command -v "$probe" >/dev/null 2>&1 || [ -e "$probe" ]; then return 0; fi
    if [ -z "${APT_UPDATED:-}" ]; then as_root apt-get update -qq; APT_UPDATED=1; fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

setup_python() {  # venv + the extension (its labextension is built by the install, with npm)
    python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install /usr/share/doc/python3-venv python3-venv
    apt_install npm nodejs npm
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e "$PROJECT[$1]"
}

docker_up() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

start_docker() {  # starts dockerd when none answers; returns non-zero when it cannot start
    apt_install dockerd docker.io   # the client alone (docker) may be there without an engine
    apt_install /bin/busybox busybox-static
    docker_up && return 0
    [ "$(id -u)" = 0 ] || { echo "setup: Docker is not running; start it (as root) to use Docker." >&2; return 1; }
    echo "setup: starting dockerd" >&2
    nohup dockerd --iptables=false --ip6tables=false --bridge=none --storage-driver=vfs \
        >/tmp/ailab-dockerd.log 2>&1 &
    for _ in $(seq 60); do docker_up && return 0; sleep 1; done
    echo "setup: dockerd did not start; see /tmp/ailab-dockerd.log" >&2
    return 1
}

build_helper_image() {  # a tiny local image (busybox: sh, rm, xargs), since no registry may be reachable
    # --fresh: built again even when present, so that a cached image never hides a broken step
    if [ "${1:-}" = --fresh ]; then docker image rm -f "$HELPER_IMAGE_BUILT" >/dev/null 2>&1 || true
    elif docker image inspect "$HELPER_IMAGE_BUILT" >/dev/null 2>&1; then return 0; fi
    local root; root=$(mktemp -d)
    mkdir -p "$root/bin" "$root/tmp"
    cp /bin/busybox "$root/bin/"
    for applet in $(/bin/busybox --list); do [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"; done
    tar -C "$root" -c . | docker import - "$HELPER_IMAGE_BUILT" >/dev/null  # (docker import has no -q)
    rm -rf "$root"
}
