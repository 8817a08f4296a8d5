"""The server's side of the worker: which Python the helper image has (probed once per image),
where the source and the store are mounted, and running one operation in its own helper
container, whose progress and result come back as JSON lines on its log stream.

Our code goes into the created helper with put_archive before it starts (the image may not hold
the package: the extension may have been pip-installed into a running container only), with
traitlets, and zstandard's compiled module when the helper's interpreter is the server's kind.
An image with no usable Python keeps the streaming path, and :meth:`WorkerRunner.describe` says
why.
"""

import collections
import io
import json
import os
import posixpath
import shlex
import signal
import sys
import sysconfig
import tarfile
import threading
import time
import uuid
from contextlib import contextmanager

from ..errors import BackupError, Busy, Cancelled, InvalidArchive, NotFound, TooLarge, Unavailable
from ..sources import DockerMountSource
from ..stores import FolderStore, VolumeStore
from . import zygote

WORKER_LABEL = "ailab-backup.worker"
SOURCE_AT, STORE_AT = "/ailab/mount", "/ailab/store"
SOURCE_RW_AT = "/ailab/mount-rw"  # a kept worker has the source twice: read-only for backups, writable for restores
JOB_ENV = "AILAB_BACKUP_JOB"  # a kept worker's job comes in the environment of its exec
_KILL = "import os, signal, sys; os.kill(int(sys.argv[1]), signal.SIGTERM)"
CODE_AT = "/ailab/code"
STOP_GRACE_SECONDS = 10  # a stopped worker removes its partial file in this time
MIN_PYTHON = (3, 10)
ERRORS = {cls.__name__: cls for cls in (BackupError, NotFound, InvalidArchive, TooLarge, Busy, Unavailable, Cancelled)}
_PROBE = (
    "import json, platform, sys, sysconfig\n"
    "if sys.version_info < (3, 10): sys.exit(1)\n"
    "try:\n import zstandard; z = zstandard.__version__\n"
    "except Exception: z = None\n"
    "print(json.dumps({'python': sys.argv[1], 'version': list(sys.version_info[:3]), "
    "'cache_tag': sys.implementation.cache_tag, 'soabi': sysconfig.get_config_var('SOABI'), "
    "'machine': platform.machine(), 'zstandard': z}))\n"
)
_PROBE_SCRIPT = (
    'for p in "$@"; do case "$p" in /*) [ -x "$p" ] || continue;; *) command -v "$p" >/dev/null 2>&1 || continue;; esac; '
    '"$p" -c "$PROBE" "$p" && exit 0; done; exit 3'
)


class NotRouted(Exception):
    """The worker cannot run this operation here; the caller takes the streaming path."""


def _probe_cache_path():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ailab-backup", "worker-probes.json")


def _read_probe_cache():
    """What earlier processes learnt about images (by image id: an image's content never
    changes), so that a command line does not probe again each time."""
    try:
        with open(_probe_cache_path(), encoding="utf-8") as f:
            cached = json.load(f)
        return cached if isinstance(cached, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_probe_cache(probes):
    path = _probe_cache_path()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        temp = f"{path}.{os.getpid()}.partial"
        with open(temp, "w", encoding="utf-8") as f:
            json.dump(probes, f)
        os.replace(temp, path)
    except OSError:
        pass  # a cache only: probed again next time


def _this_python():
    import platform

    return {"cache_tag": sys.implementation.cache_tag, "soabi": sysconfig.get_config_var("SOABI"),
            "machine": platform.machine()}


class WorkerRunner:
    """Runs backup, restore, verify and the restore preview in a worker container."""

    def __init__(self, docker):
        self.docker = docker
        self._probes = {}  # image id -> what its Python is (or why none is usable)
        self._not_mountable = set()  # folder stores the engine turned out not to see
        self._code = {}  # with zstandard or not -> the tar of our code
        self._code_ends = {}  # id of such a tar -> where its end-of-archive blocks begin
        self._lock = threading.Lock()
        self._kept_making = threading.Lock()
        self._attached = {}  # kept worker's id -> its attached standard input (see zygote.KEPT_MAIN)
        self.last_timeline = None  # where the last job's time went (see job_timeline)
        self.containers_created = 0  # for the benchmark and the tests: what each operation costs

    # where things are ---------------------------------------------------------------------------

    def probe(self):
        """What Python the helper image offers: a dict with ``python`` (its path) or ``why`` not."""
        import docker

        name = self.docker.image()
        try:
            image_id = self.docker.client.images.get(name).id
        except docker.errors.DockerException as exc:
            raise Unavailable(f"Docker could not inspect the helper image {name!r}: {exc}") from None
        with self._lock:
            if image_id not in self._probes:
                self._probes.update(_read_probe_cache())
            candidates = [sys.executable, "python3"]
            known = self._probes.get(image_id)
            if known and known.get("server") == _this_python() and known.get("asked") == candidates:
                return {**known, "image": name}
        command = ["env", f"PROBE={_PROBE}", "sh", "-c", _PROBE_SCRIPT, "sh", *candidates]
        none_found = {"python": None, "why": f"the helper image {name!r} has no Python {MIN_PYTHON[0]}."
                      f"{MIN_PYTHON[1]} or later (looked for the server's own interpreter and python3)"}
        self.containers_created += 1
        try:
            out = self.docker.run([], command).decode(errors="replace").strip().splitlines()
            found = json.loads(out[-1])
        except BackupError as exc:
            if "helper command failed" not in str(exc):
                raise  # Docker failed, not the probe: nothing learnt about the image
            found = none_found
        except (ValueError, IndexError):
            found = none_found
        else:
            if not found.get("zstandard") and {k: found.get(k) for k in _this_python()} != _this_python():
                found = {"python": None, "why": f"the Python {'.'.join(map(str, found['version']))} of the "
                         f"helper image {name!r} has no zstandard, and this server's compiled zstandard does "
                         "not fit it"}
            found["inject_zstandard"] = not found.get("zstandard")
        found["image"], found["server"], found["asked"] = name, _this_python(), candidates
        with self._lock:
            self._probes[image_id] = found
            _write_probe_cache(self._probes)
        return found

    def _store_place(self, store, create=True):
        """(mount, path in the helper, marker needed) for the store, or a reason string. Without
        ``create`` (the status asks) a missing store is not made."""
        if isinstance(store, VolumeStore):
            if create:
                self.docker.ensure_volume(store.volume)
            return self.docker.mount("volume", store.volume, STORE_AT), STORE_AT, False
        if not isinstance(store, FolderStore):
            return "the store is neither a volume nor a folder"
        if store.path in self._not_mountable:
            return f"the Docker engine does not see the store folder {store.path}"
        from ..docker_helper import find_covering_mount

        own = self.docker.own_container()
        if own is None:  # the server runs on the engine's host: the folder is the host's
            if create:
                os.makedirs(store.path, exist_ok=True)
            return self.docker.mount("bind", store.path, STORE_AT), STORE_AT, True
        mount, below = find_covering_mount(own.get("Mounts"), store.path)
        if mount is None:
            return (f"the store folder {store.path} is in this container's own file system, which a "
                    "helper cannot mount; a volume store (or a folder on a mounted volume) can")
        name = mount.get("Name") if mount.get("Type") == "volume" else mount.get("Source")
        if create:
            os.makedirs(store.path, exist_ok=True)
        path = STORE_AT if below in ("", ".") else posixpath.join(STORE_AT, below)
        return self.docker.mount("volume" if mount.get("Type") == "volume" else "bind", name, STORE_AT), path, True

    def describe(self, source, store):
        """{"in_use": bool, "why": ...}: whether operations run next to the data, and why (not)."""
        try:
            self._where(source, store, needs_source=True, create=False)
        except NotRouted as exc:
            return {"in_use": False, "why": str(exc)}
        except BackupError as exc:
            return {"in_use": False, "why": f"undecided: {exc}"}
        probe = self.probe()
        return {"in_use": True, "why": f"backups and restores run inside a helper container of {probe['image']!r}, "
                f"next to the data, with its Python at {probe['python']}"}

    def _where(self, source, store, needs_source, create=True):
        if needs_source and not isinstance(source, DockerMountSource):
            raise NotRouted("the notebooks folder is a folder of this server: it is backed up directly")
        place = self._store_place(store, create)
        if isinstance(place, str):
            raise NotRouted(place)
        probe = self.probe()
        if not probe.get("python"):
            raise NotRouted(f"{probe['why']}; setting AILabBackup.helper_image to the AI-Lab image (which has "
                            "Python) makes backups and restores run next to the data, which is faster")
        return place, probe

    # running --------------------------------------------------------------------------------------

    def _mounts(self, store_mount, source, needs_source, write_source):
        """The worker's mounts: the store, and the source (checked to exist: a mount would make a
        missing volume)."""
        mounts = [store_mount]
        if needs_source:
            source.check_exists()
        if self.docker.keep_helpers and isinstance(source, DockerMountSource):  # verify too: the same kept worker
            mounts += self._kept_source_mounts(source)
        elif needs_source:
            mounts.append(self.docker.mount(source.kind, source.mount_name, SOURCE_AT, read_only=not write_source))
        return mounts

    @contextmanager
    def made_first(self, op, source, store, write_source=False):
        """Within it, the command line's worker container for ``op`` is made at once and shared
        by the open session (see DockerHelper.share) until the job takes it: what the operation
        reads from the store before the job (the settings) goes through it, so one container
        serves the whole command. Nothing is made for a server (its kept worker serves) or where
        no worker can run."""
        if self.docker.keep_helpers or not self.docker.in_session():
            yield
            return
        needs_source = op != "verify"
        try:
            (store_mount, _, _), probe = self._where(source, store, needs_source)
        except NotRouted:
            yield  # the streaming path's own helpers serve
            return
        mounts = self._mounts(store_mount, source, needs_source, write_source)
        if self.docker.shared(mounts) is None:
            # our code's tar is made while the engine makes the container (copying the image)
            code = threading.Thread(target=self._code_tar, args=(probe.get("inject_zstandard", False),),
                                    daemon=True, name="ailab-backup-code-tar")
            code.start()
            try:
                self.docker.share(mounts, self._create_worker(probe, mounts))
            finally:
                code.join()
        yield

    def _create_worker(self, probe, mounts):
        from ..docker_helper import helper_labels

        container = self.docker.job_helper(mounts, probe["image"], helper_labels(**{WORKER_LABEL: "1"}),
                                           "create a worker container", working_dir="/")
        self.containers_created += 1
        return container

    def run(self, op, source, store, config, progress, params, write_source=False):
        """Run ``op`` in a worker; its result. Raises :class:`NotRouted` when no worker can run it
        here (nothing was changed then), else what the operation raised."""
        needs_source = op != "verify"
        (store_mount, store_path, marker_needed), probe = self._where(source, store, needs_source)
        job_id = uuid.uuid4().hex[:16]
        kept = self.docker.keep_helpers  # a server: one worker kept for its lifetime, jobs exec'd into it
        job = {"id": job_id, "op": op, "params": params, "config": config,
               "store": {"path": store_path, "describe": store.describe()}}
        mounts = self._mounts(store_mount, source, needs_source, write_source)
        if needs_source:
            base = SOURCE_RW_AT if kept and write_source else SOURCE_AT
            path = posixpath.join(base, source.subpath) if source.subpath else base
            job["source"] = {"path": path, "describe": source.describe(), "slug": source.slug}
        marker = None
        if marker_needed:  # proof that the helper sees the very folder this server sees
            marker = f".ailab-worker-{job_id}"
            job["store"]["marker"] = marker
            open(os.path.join(store.path, marker), "wb").close()
        try:
            if kept:
                return self._run_kept(job, mounts, probe, progress)
            return self._run_container(job, mounts, probe, progress)
        except BackupError as exc:
            if str(exc) == "NotSameFolder":
                self._not_mountable.add(store.path)
                raise NotRouted(f"the Docker engine does not see the store folder {store.path}") from None
            raise
        finally:
            if marker:
                try:
                    os.unlink(os.path.join(store.path, marker))
                except OSError:
                    pass
            invalidate = getattr(store, "invalidate", None)
            if invalidate:
                invalidate()  # the worker may have written the store

    def _code_tar(self, with_zstandard):
        """Our package and traitlets (pure Python), and zstandard's module, under CODE_AT."""
        with self._lock:
            if with_zstandard in self._code:
                return self._code[with_zstandard]
        import traitlets

        import ailab_backup_ext

        packages = [ailab_backup_ext, traitlets]
        if with_zstandard:
            import zstandard

            packages.append(zstandard)
        tag = sys.implementation.cache_tag
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for package in packages:
                root = os.path.dirname(package.__file__)
                name = os.path.basename(root)
                for dirpath, dirnames, filenames in os.walk(root):
                    dirnames[:] = [d for d in dirnames if d not in ("tests", "labextension", "static")]
                    for filename in filenames:
                        wanted = filename.endswith(".py") or (
                            filename.endswith(f".{tag}.pyc"))  # compiled already: no compiling per container
                        if package.__name__ == "zstandard":
                            wanted = filename == "__init__.py" or filename.startswith("backend_c.")
                        if not wanted:
                            continue
                        full = os.path.join(dirpath, filename)
                        rel = os.path.relpath(full, root)
                        tar.add(full, arcname=posixpath.join(CODE_AT.lstrip("/"), name, rel), recursive=False,
                                filter=_plain)
        data = buf.getvalue()
        with self._lock:
            self._code[with_zstandard] = data
        return data

    def _job_tar(self, code, job, python):
        """The code's tar with the job and its script appended: one put_archive for both."""
        script = (f"export PYTHONPATH={CODE_AT} PYTHONUNBUFFERED=1\n"
                  f"exec {shlex.quote(python)} -m ailab_backup_ext.worker.main /ailab/job.json\n").encode()
        payload = json.dumps(job).encode()
        buf = io.BytesIO()
        buf.write(code)
        with self._lock:
            if id(code) not in self._code_ends:
                self._code_ends[id(code)] = _end_of_members(code)
            buf.seek(self._code_ends[id(code)])
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name, data in (("ailab/job.json", payload), ("ailab/job.sh", script)):
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o600
                tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    def _run_container(self, job, mounts, probe, progress):
        code = self._code_tar(probe.get("inject_zstandard", False))
        container = self.docker.take_shared(mounts)  # made first (see made_first): this job's alone now
        if container is not None and container.attrs.get("Config", {}).get("Image") != probe["image"]:
            self.docker._remove(container.id)  # the settings read through it named another helper image
            container = None
        if container is None:
            container = self._create_worker(probe, mounts)
        try:
            with self.docker.answering("put the worker's code into its helper container"):
                container.put_archive("/", self._job_tar(code, job, probe["python"]))
                container.start()

            def stop():
                container.kill(signal=signal.SIGTERM)
                container.wait(timeout=STOP_GRACE_SECONDS)  # it removes its partial file

            return self._follow(
                job, progress, lambda: container.logs(stdout=True, stderr=False, stream=True, follow=True), stop,
                lambda: container.wait().get("StatusCode"),
                lambda: container.logs(stdout=False, stderr=True, tail=20).decode(errors="replace"))
        finally:
            self.docker._remove(container.id)

    # the kept worker (a server's) -----------------------------------------------------------------

    def _kept_source_mounts(self, source):
        return [self.docker.mount(source.kind, source.mount_name, SOURCE_AT, read_only=True),
                self.docker.mount(source.kind, source.mount_name, SOURCE_RW_AT)]

    def prepare(self, source, store):
        """Make the kept worker for this source and store now (a server), so that the next job
        finds it started; raises :class:`NotRouted` when no worker can run here."""
        (store_mount, _, _), probe = self._where(source, store, needs_source=True)
        mounts = [store_mount, *self._kept_source_mounts(source)]
        return self._kept_worker(_kept_key(probe, mounts), mounts, probe)

    def _kept_worker(self, key, mounts, probe):
        """The started worker kept for these mounts, made (with our code in it) when there is none."""
        with self.docker._kept_lock:
            helper = self.docker._kept.get(key)
        if helper is not None:
            return helper
        from ..docker_helper import KEPT_LABEL, helper_labels

        with self._kept_making:  # one at a time: two jobs never make two
            with self.docker._kept_lock:
                helper = self.docker._kept.get(key)
            if helper is not None:
                return helper
            code = self._code_tar(probe.get("inject_zstandard", False))
            self.docker._remove_orphans()
            with self.docker.answering("create a worker container"):
                helper = self.docker.create_helper(
                    probe["image"], mounts, command=["-c", zygote.KEPT_MAIN, CODE_AT], entrypoint=[probe["python"]],
                    user="0:0",
                    labels=helper_labels(**{WORKER_LABEL: "kept", KEPT_LABEL: "1"}), network_disabled=True,
                    working_dir="/", stdin_open=True, auto_remove=True)
            self.containers_created += 1
            try:
                with self.docker.answering("start the worker container"):
                    helper.put_archive("/", code)
                    # held open for the server's lifetime: when it closes, the worker ends and goes
                    attached = helper.attach_socket(params={"stdin": 1, "stream": 1})
                    helper.start()
            except BaseException:
                self.docker._remove(helper.id)
                raise
            self._attached[helper.id] = attached
            with self.docker._kept_lock:
                self.docker._kept[key] = helper
            return helper

    def _drop_kept(self, key, helper):
        """Forget the kept worker and remove it (when Docker is lost: by the next operation)."""
        with self.docker._kept_lock:
            if self.docker._kept.get(key) is helper:
                del self.docker._kept[key]
        attached = self._attached.pop(helper.id, None)
        self.docker._remove(helper.id)
        if attached is not None:
            try:
                attached.close()
            except OSError:
                pass

    def _run_kept(self, job, mounts, probe, progress):
        """Run the job in the server's kept worker, as a process of its own (docker exec): no
        container to make, no code to copy, no container to start for each operation; the exec
        has the worker's zygote fork the job (no interpreter to start, no imports), or runs
        ``worker.main`` itself when there is no zygote (see worker.zygote)."""
        import docker

        api = self.docker.client.api
        key = _kept_key(probe, mounts)
        command = [probe["python"], "-I", "-S", "-c", zygote.CLIENT, zygote.SOCKET_AT]
        env = {"PYTHONPATH": CODE_AT, "PYTHONUNBUFFERED": "1", JOB_ENV: json.dumps(job)}
        requested = time.time()
        for attempt in range(2):
            helper = self._kept_worker(key, mounts, probe)
            try:
                with self.docker.answering("start a job in the worker container"):
                    exec_id = api.exec_create(helper.id, command, environment=env, user="0:0", workdir="/")["Id"]
                    output = api.exec_start(exec_id, stream=True, demux=True)
                break
            except BackupError:  # it ended (killed, or its server's input closed): made again once
                self._drop_kept(key, helper)
                if attempt:
                    raise
        started = {}
        errors = collections.deque(maxlen=20)

        def stdout():
            for out, err in output:
                if err:
                    errors.append(err)
                if out:
                    if not started and b'"pid"' in out:
                        for line in out.split(b"\n"):
                            try:
                                started.update(pid=int(json.loads(line)["pid"]))
                            except (ValueError, KeyError, TypeError):
                                pass
                    yield out

        def stop():
            if started.get("pid"):
                api.exec_start(api.exec_create(helper.id, [probe["python"], "-c", _KILL, str(started["pid"])],
                                               user="0:0")["Id"])
                for _ in range(STOP_GRACE_SECONDS * 10):  # it removes its partial file
                    if not api.exec_inspect(exec_id).get("Running"):
                        return
                    time.sleep(0.1)
            self._drop_kept(key, helper)

        def status():
            try:
                return api.exec_inspect(exec_id).get("ExitCode")
            except docker.errors.NotFound:
                return None

        finished = False
        try:
            result = self._follow(job, progress, stdout, stop, status,
                                  lambda: b"".join(errors).decode(errors="replace"), requested)
            finished = True
            return result
        except BackupError as exc:
            finished = not isinstance(exc, Unavailable) and not str(exc).startswith("The helper container")
            raise
        finally:
            if not finished:  # a worker we could not follow, or that died: never used again
                self._drop_kept(key, helper)

    def _follow(self, job, progress, stdout, stop, exit_status, stderr_tail, requested=None):
        """Relay the worker's progress lines (``stdout()``: its output's chunks) and return its
        result; ``stop()`` stops it when the job is cancelled. ``requested``: when the job was
        asked for (wall clock), for :attr:`last_timeline`."""
        import docker
        import requests
        import urllib3

        relay = _Relay(progress)
        outcome = {}
        self.last_timeline = None
        requested = time.time() if requested is None else requested
        chunks, pending, lines = stdout(), b"", []
        try:
            for chunk in chunks:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                while lines:
                    message = _message(lines.pop(0))
                    if "progress" in message:
                        relay(message["progress"])
                    elif "timeline" in message:
                        self.last_timeline = job_timeline(message["timeline"], requested, time.time())
                    elif "result" in message or "error" in message:
                        outcome = message
            status = exit_status()
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, ConnectionError,
                docker.errors.APIError) as exc:
            raise Unavailable(
                f"Docker stopped answering while a helper container ran the {job['op']} "
                f"({type(exc).__name__}). Nothing partial is kept: once Docker is back, a backup "
                "it was making is either complete, verified and listed, or absent. Check that "
                "Docker runs, then look at the list or try again."
            ) from None
        except BaseException as exc:  # the job was cancelled (server shutting down): stop the worker
            try:
                stop()
            except Exception:  # noqa: BLE001 - removed below anyway
                pass
            if isinstance(exc, Cancelled):
                finished = _result_after_stop(lines, pending, chunks)
                if finished is not None:
                    return finished["result"]
            raise
        if "result" in outcome:
            return outcome["result"]
        if "error" in outcome:
            raise _error(outcome["error"])
        try:
            tail = stderr_tail().strip()[-500:]
        except Exception:  # noqa: BLE001 - the container may be gone already
            tail = ""
        raise BackupError(
            f"The helper container running the {job['op']} stopped before it finished (exit status "
            f"{status}){': ' + tail if tail else ''}. Nothing partial was kept; try again."
        )


def job_timeline(reported, requested, received):
    """The worker's timeline line as seconds since the job was asked for: ``{"phases": [[phase,
    began, CPU seconds of the worker process by then (None: not known)], ...], "threads": {task:
    CPU seconds}, "total": seconds, "started_by": "zygote" (forked), "job-env" (exec'd) or "exec" (a
    helper of its own)}``; from the request to the process's start is "starting the
    process", from there to our code's first line "imports", and after the worker's last mark up
    to here "result to the server"."""
    try:
        phases = [["starting the process", 0.0, None]]
        if reported.get("process_started"):
            forked = reported.get("started_by") == "zygote"  # our code imported already
            phases.append(["fork" if forked else "imports", reported["process_started"] - requested, 0.0])
        phases.append(["job", reported["main_began"] - requested, reported["cpu_at_main"]])
        phases += [[name, at - requested, cpu] for name, at, cpu in reported["phases"]]
        phases.append(["result to the server", reported["ended"] - requested, reported["cpu_at_end"]])
        return {"phases": [[name, round(at, 4), None if cpu is None else round(cpu, 4)] for name, at, cpu in phases],
                "threads": {k: round(v, 4) for k, v in reported.get("threads", {}).items()},
                "total": round(received - requested, 4), "started_by": reported.get("started_by")}
    except (KeyError, TypeError, ValueError):
        return None  # another version's: not shown


def _message(line):
    try:
        message = json.loads(line)
    except ValueError:
        return {}  # not ours (an image's own output): ignored
    return message if isinstance(message, dict) else {}


def _result_after_stop(lines, pending, chunks):
    """The result line of a worker that was stopped after its commit began (which a stop does not
    interrupt, see ``worker.main.COMMIT_BEGUN``): the rest of its output, read to the end."""
    try:
        for chunk in chunks:
            pending += chunk
    except Exception:  # noqa: BLE001 - the output ended badly: no result then
        pass
    for line in [*lines, *pending.split(b"\n")]:
        message = _message(line)
        if "result" in message:
            return message
    return None


def _kept_key(probe, mounts):
    return "worker", probe["image"], tuple(sorted(repr(sorted(m.items())) for m in mounts))


def _end_of_members(data):
    """Where the end-of-archive blocks of a tar we made begin."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.getmembers()
        return tar.offset


def _plain(info):
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o755 if info.isdir() else 0o644
    return info


def _error(reported):
    kind, message = reported.get("type"), reported.get("message", "")
    if kind == "OSError" and reported.get("errno"):
        return OSError(reported["errno"], message, reported.get("filename"))
    if kind in ERRORS:
        return ERRORS[kind](message)
    return BackupError(f"The worker failed unexpectedly ({kind}: {message}).")


class _Relay:
    """The worker's progress snapshots, replayed on the server's :class:`Progress`."""

    def __init__(self, progress):
        self.progress = progress
        self.phase = None
        self.done = (0, 0)

    def __call__(self, snapshot):
        if snapshot.get("phase") != self.phase or snapshot["done_bytes"] < self.done[0]:
            self.phase = snapshot.get("phase")
            if self.phase == "done":
                self.progress.complete(snapshot["total_bytes"], snapshot["total_files"])
                return
            self.progress.start(self.phase, snapshot["total_bytes"], snapshot["total_files"])
            self.done = (0, 0)
        self.progress.total_bytes = max(self.progress.total_bytes, snapshot["total_bytes"])
        add_bytes, add_files = snapshot["done_bytes"] - self.done[0], snapshot["done_files"] - self.done[1]
        self.done = (snapshot["done_bytes"], snapshot["done_files"])
        if add_bytes > 0:
            self.progress.add_bytes(add_bytes)
        for _ in range(max(0, add_files)):
            self.progress.add_file()
