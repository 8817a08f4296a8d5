#!/usr/bin/env bash
# Sets up and starts JupyterLab with the extension. With Docker reachable it behaves like the
# AI-Lab Docker edition: the notebooks live in the volume $VOLUME (default ailab-notebooks) and
# backups go through the Docker socket into the volume ailab-backups. Without Docker, the
# notebooks folder ~/notebooks is backed up directly. Arguments pass on to jupyter lab.
source "$(dirname "$0")/setup.sh"
setup_python lab
args=(--ip 127.0.0.1 --port "${PORT:-8888}")
[ "$(id -u)" = 0 ] && args+=(--allow-root)
if start_docker 2>/dev/null; then
    build_helper_image
    export AILAB_BACKUP_VOLUME=${VOLUME:-ailab-notebooks}
    docker image inspect ubuntu >/dev/null 2>&1 || export AILAB_BACKUP_HELPER_IMAGE=${AILAB_BACKUP_HELPER_IMAGE:-$HELPER_IMAGE_BUILT}
    docker volume create "$AILAB_BACKUP_VOLUME" >/dev/null
    notebooks=$(docker volume inspect -f '{{.Mountpoint}}' "$AILAB_BACKUP_VOLUME")
    echo "lab: Docker mode, notebooks in the volume $AILAB_BACKUP_VOLUME ($notebooks)" >&2
else
    notebooks=${NOTEBOOK_DIR:-$HOME/notebooks}
    mkdir -p "$notebooks"
    echo "lab: no Docker, notebooks in $notebooks" >&2
fi
[ -f "$PROJECT/notebooks/backup_and_restore.ipynb" ] && cp -n "$PROJECT/notebooks/backup_and_restore.ipynb" "$notebooks/" || true
exec "$VENV/bin/jupyter" lab --notebook-dir "$notebooks" "${args[@]}" "$@"
