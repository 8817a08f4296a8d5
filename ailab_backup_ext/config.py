"""The one configuration object, read by the server extension and the command line.

Every trait can be set in ``jupyter_server_config.py`` (``c.AILabBackup.store = ...``), on the
command line of ``jupyter lab`` (``--AILabBackup.store=...``), by ``ailab-backup --store ...``, or by
an environment variable ``AILAB_BACKUP_<TRAIT>`` which is used when nothing else sets the trait.
Inside a Docker container, a variable missing from the process environment is taken from the
container's own ``Config.Env``: AI-Lab starts Jupyter through ``sudo``, which drops ``docker run -e``.
"""

import functools
import os

from traitlets import Bool, Enum, Float, Int, List, Unicode, default
from traitlets.config import Configurable

ENV_PREFIX = "AILAB_BACKUP_"


@functools.lru_cache(maxsize=1)
def container_environment():
    """The ``AILAB_BACKUP_*`` variables the container this process runs in was started with
    (``docker inspect``), or {} outside a container or when Docker cannot be reached."""
    from .docker_helper import own_container_id

    container_id = own_container_id()
    if container_id is None:
        return {}
    try:
        import docker

        client = docker.from_env(timeout=10)
        try:
            env = client.api.inspect_container(container_id)["Config"].get("Env") or []
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - no socket, no permission: the process environment only
        return {}
    pairs = (item.partition("=") for item in env)
    return {key: value for key, _, value in pairs if key.startswith(ENV_PREFIX)}


def _env_default(name, fallback):
    """A traitlets default that takes ``AILAB_BACKUP_<NAME>`` when it is set."""

    @default(name)
    def _default(self):
        raw = os.environ.get(ENV_PREFIX + name.upper())
        if raw is None:
            raw = container_environment().get(ENV_PREFIX + name.upper())
        if raw is None or raw == "":
            return fallback
        trait = self.traits()[name]
        if isinstance(trait, List):
            return [part.strip() for part in raw.split(",") if part.strip()]
        if isinstance(trait, Bool):
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if isinstance(trait, Int):
            return int(raw)
        if isinstance(trait, Float):
            return float(raw)
        return raw

    return _default


class AILabBackup(Configurable):
    """Back up and restore the AI-Lab notebooks folder and its Secure Configuration Storage."""

    volume = Unicode(
        "",
        config=True,
        help="""Docker volume to back up and restore. Empty: found automatically, as the mount that
        covers the Jupyter root directory when the server runs in a Docker container.""",
    )
    source_dir = Unicode(
        "",
        config=True,
        help="""Folder of this machine to back up and restore instead of a Docker volume. Empty: the
        Jupyter server's root directory when no Docker volume is used.""",
    )
    store = Unicode(
        "",
        config=True,
        help="""Where backups are kept: a Docker volume name (no '/'), a folder path, or an S3 bucket
        prefix 's3://BUCKET/PREFIX' ('{username}' in it is filled from JUPYTERHUB_USER, else the OS
        user). Empty: the volume 'ailab-backups' when a Docker volume is backed up, else the folder
        'ailab-backups' in the Jupyter data directory.""",
    )
    copy_to = Unicode(
        "",
        config=True,
        help="""A second store (same forms as 'store', typically 's3://BUCKET/PREFIX'): each new backup
        is copied there and read back after it is made; when it cannot be reached the backup still
        succeeds and the copy stays pending, retried after the next backup and by the schedule.
        Restores read whichever copy exists. Empty: no second copy.""",
    )
    s3_endpoint_url = Unicode(
        "",
        config=True,
        help="""Endpoint of an S3-compatible service (MinIO, Ceph RGW, SeaweedFS), e.g.
        'https://minio.example.com:9000'. Empty: AWS S3. Credentials always come from the standard
        AWS chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE and ~/.aws, an instance
        role); they are never written or shown.""",
    )
    s3_region = Unicode(
        "",
        config=True,
        help="""Region of the S3 bucket, e.g. 'eu-central-1'. Empty: AWS_REGION / the profile's, else
        us-east-1.""",
    )
    s3_timeout = Int(
        60,
        config=True,
        help="""Seconds to wait for the S3 service to connect or answer before giving up (with retries).""",
    )
    encryption = Enum(
        ["auto", "on", "off"],
        default_value="auto",
        config=True,
        help="""Encryption of backups kept in S3 (age format, X25519): 'auto' encrypts when a key exists
        (age_identity_file, or age_recipients), 'on' refuses to store anything in S3 unencrypted,
        'off' never encrypts. Local stores are never encrypted.""",
    )
    age_identity_file = Unicode(
        "",
        config=True,
        help="""File (mode 0600) holding the age private key that opens encrypted backups; 'ailab-backup
        keygen' makes it. Never inside the notebooks folder. Empty: 'ailab-backup-age.key' in the
        Jupyter data directory.""",
    )
    age_recipients = List(
        Unicode(),
        default_value=[],
        config=True,
        help="""Further age public keys (age1...) that new encrypted backups are also encrypted for,
        e.g. an administrator's recovery key whose private half is kept elsewhere.""",
    )
    helper_image = Unicode(
        "",
        config=True,
        help="""Docker image for the short-lived helper containers that mount the volumes. It must be
        present locally and provide sh, rm and xargs. Empty: the image of the container this server
        runs in, else 'ubuntu'. A choice made in the UIs (one of the offered images, see
        helper_image_choices) is kept beside the store and wins over this setting.""",
    )
    helper_cpus = Float(
        0.0,
        min=0.0,
        config=True,
        help="""The CPUs each helper container may use, as Docker's --cpus (1.5: one and a half
        cores). 0, the default, sets no limit. A limit keeps a long backup from slowing the
        notebooks that run beside it, and makes the backup slower in turn.""",
    )
    helper_image_choices = List(
        Unicode(),
        default_value=[],
        config=True,
        help="""More images the UIs may offer as the helper image, besides helper_image, this server's
        own container image and 'ubuntu'. A UI can never name any other image.""",
    )
    docker_url = Unicode(
        "",
        config=True,
        help="""Docker engine to use. Empty: DOCKER_HOST, else the local socket
        unix:///var/run/docker.sock. 'none' disables Docker: the local folder is used.""",
    )
    compression = Enum(
        ["zstd", "gzip"],
        default_value="zstd",
        config=True,
        help="""Compression of new backups: 'zstd' (fast, multithreaded) or 'gzip' (readable by any
        tar). Reading accepts zstd, gzip and plain tar whatever this says.""",
    )
    excludes = List(
        Unicode(),
        default_value=[],
        config=True,
        help="""Glob patterns of paths (relative to the notebooks folder, e.g. 'models_cache' or
        '*.tmp') left out of new backups. A pattern that matches a folder leaves out all of it.
        Excludes set in the UIs are kept beside the store and win over this setting.""",
    )
    max_archive_bytes = Int(
        0,
        config=True,
        help="""Largest total size in bytes that an archive may unpack to; 0 means no limit. A bigger
        archive is refused before anything is written.""",
    )
    max_upload_bytes = Int(
        20 * 1024**3,
        config=True,
        help="""Largest archive in bytes accepted by the upload endpoint; 0 means no limit.""",
    )

    max_compression_ratio = Int(
        1000,
        config=True,
        help="""An uploaded archive that would unpack to more than this many times its size is
        refused as a decompression bomb (checked from the headers and as it is unpacked, before
        anything is written), and so is one whose headers and names alone unpack to more than a
        fifth of it. 0: no limit. Backups made here are not limited by it.""",
    )
    max_entries = Int(
        1_000_000,
        config=True,
        help="""Most entries (files, folders, symlinks) an archive may hold; a bigger one is refused
        before anything is written (it bounds the memory a check needs). 0 means no limit.""",
    )
    max_concurrent_uploads = Int(
        4,
        config=True,
        help="""Most uploads received or checked at the same time; one more is answered 429 (try
        again later). 0 means no limit.""",
    )
    upload_stall_seconds = Int(
        60,
        config=True,
        help="""An upload whose body brings less than 64 KiB in this many seconds is cut off and its
        partial file removed, so that a client trickling bytes in cannot hold a spool and an upload
        slot. 0 turns the check off.""",
    )
    progress_interval = Float(
        0.2,
        min=0.0,
        config=True,
        help="""Seconds between the progress lines a worker in the helper container sends while
        it backs up, restores or checks (each is relayed to the UIs). Lower gives finer progress
        for a little more work; the tests that stop a worker midway use a small value.""",
    )
    check_processes = Int(
        1,
        min=1,
        config=True,
        help="""How many long checks (uploads, restore previews of a local folder) run at once,
        each in a child process of its own, so that status, listings and the UIs stay quick
        while archives are checked; more are queued. Each takes a core while it runs (at a lower
        priority than the server, nice 10): raise it only with cores to spare.""",
    )
    keep_last = Int(
        0,
        config=True,
        help="""Retention: how many backups to keep; older ones are pruned (after each backup when
        prune_after_backup is on, or by 'ailab-backup prune'). The newest safety backup, taken
        before a restore for undo, is never pruned. 0 keeps all. A value set in the UIs is kept
        beside the store and wins over this setting.""",
    )
    prune_after_backup = Bool(
        True,
        config=True,
        help="""Prune by keep_last after each new backup. Off: only 'ailab-backup prune' prunes.""",
    )
    safety_backup = Bool(
        True,
        config=True,
        help="""Take a backup of the current state before each restore changes anything, so that
        'Undo last restore' can bring it back. Turn off only when space is short.""",
    )

    notebook_defaults = Unicode(
        "",
        config=True,
        help="""Folder holding the running AI-Lab release's default notebooks, which each backup is
        compared with (by SHA-256) to record which files are unchanged defaults of its release.
        Empty: NOTEBOOK_DEFAULTS of this server's container (its Config.Env: AI-Lab's sudo drops it
        from the server's environment), else of the environment, else
        /home/jupyter/notebook-defaults when it exists.""",
    )
    release = Unicode(
        "",
        config=True,
        help="""Name of the running AI-Lab release (e.g. '6.0.0'), recorded in each backup and used
        in the name of a new release's notebook kept beside the user's ('NAME (AI-Lab 6.0.0).ipynb').
        Empty: the tag of this server's container image, when it runs in one (the VM editions
        have none).""",
    )
    schedule = Unicode(
        "",
        config=True,
        help="""Automatic backups while the server runs: 'every 6h', 'every 30m', 'daily 02:30'
        (UTC) or '' / 'off' (the default). A schedule set from the UI is kept beside the store and
        wins over this setting. Unchanged content is not backed up again (recorded as skipped).""",
    )
    schedule_tick_seconds = Int(
        30,
        min=1,
        config=True,
        help="""How often, in seconds, the server looks whether a scheduled backup is due (cheap when
        none is). A run starts at most this long after it is due.""",
    )

    _default_volume = _env_default("volume", "")
    _default_source_dir = _env_default("source_dir", "")
    _default_store = _env_default("store", "")
    _default_helper_image = _env_default("helper_image", "")
    _default_docker_url = _env_default("docker_url", "")
    _default_compression = _env_default("compression", "zstd")
    _default_excludes = _env_default("excludes", [])
    _default_helper_cpus = _env_default("helper_cpus", 0.0)
    _default_helper_image_choices = _env_default("helper_image_choices", [])
    _default_max_archive_bytes = _env_default("max_archive_bytes", 0)
    _default_max_upload_bytes = _env_default("max_upload_bytes", 20 * 1024**3)
    _default_keep_last = _env_default("keep_last", 0)
    _default_max_entries = _env_default("max_entries", 1_000_000)
    _default_max_concurrent_uploads = _env_default("max_concurrent_uploads", 4)
    _default_upload_stall_seconds = _env_default("upload_stall_seconds", 60)
    _default_check_processes = _env_default("check_processes", 1)
    _default_progress_interval = _env_default("progress_interval", 0.2)
    _default_max_compression_ratio = _env_default("max_compression_ratio", 1000)
    _default_prune_after_backup = _env_default("prune_after_backup", True)
    _default_safety_backup = _env_default("safety_backup", True)
    _default_schedule = _env_default("schedule", "")
    _default_notebook_defaults = _env_default("notebook_defaults", "")
    _default_release = _env_default("release", "")
    _default_schedule_tick_seconds = _env_default("schedule_tick_seconds", 30)
    _default_copy_to = _env_default("copy_to", "")
    _default_s3_endpoint_url = _env_default("s3_endpoint_url", "")
    _default_s3_region = _env_default("s3_region", "")
    _default_s3_timeout = _env_default("s3_timeout", 60)
    _default_encryption = _env_default("encryption", "auto")
    _default_age_identity_file = _env_default("age_identity_file", "")
    _default_age_recipients = _env_default("age_recipients", [])
