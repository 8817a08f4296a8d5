"""No one gets in: every route of the table needs Jupyter's auth; cross-site requests are refused;
the kernel credential opens /ailab/backup and nothing else, also on a password-only server."""

import json
import re
import urllib.parse

import requests

import pytest
from tornado.httpclient import HTTPClientError

from ailab_backup_ext.handlers import ROUTES
from restutil import run_in_new_kernel

SAMPLE = {"backup_id": "nb-20260101T000000Z", "job_id": "0" * 32}


def concrete(pattern):
    return re.sub(r"\(\?P<(\w+)>[^)]*\)", lambda m: SAMPLE[m.group(1)], pattern).replace("\\", "")


def route_methods():
    for pattern, handler in ROUTES:
        for method in ("get", "post", "put", "delete"):
            if method in vars(handler):
                yield concrete(pattern), method.upper()


async def raw(jp_fetch, path, method="GET", headers=None, body=None):
    """A request without the test's token (unless headers give credentials)."""
    if method in ("POST", "PUT") and body is None:
        body = b"{}"
    headers = {"Authorization": "", **(headers or {})}
    try:
        return await jp_fetch(*path.split("/"), method=method, headers=headers, body=body,
                              follow_redirects=False, raise_error=False)
    except HTTPClientError as exc:
        return exc.response


def test_route_table_is_complete():
    assert len(list(route_methods())) == 22  # a new route must be added to the walk below


@pytest.mark.parametrize("path, method", list(route_methods()))
async def test_unauthenticated_requests_are_refused(jp_fetch, path, method):
    response = await raw(jp_fetch, "ailab/backup" + path, method)
    assert response.code in (403, 302), (path, method, response.code)  # 302: GET goes to login
    if response.code == 302:
        assert "/login" in response.headers["Location"]


@pytest.mark.parametrize("path, method", [(p, m) for p, m in route_methods() if m != "GET"])
async def test_cross_site_requests_with_the_cookie_are_refused(jp_serverapp, jp_fetch, path, method):
    jar = await browser_cookies(jp_serverapp, jp_fetch)
    cookies = _cookie_header({k: v for k, v in jar.items() if k != "_xsrf"})
    # what another site's form could send: the browser's cookie, but no _xsrf token
    response = await raw(jp_fetch, "ailab/backup" + path, method, {"Cookie": cookies})
    assert response.code == 403, (path, method, response.code)
    assert b"XSRF" in response.body or b"xsrf" in response.body.lower()


async def browser_cookies(jp_serverapp, jp_fetch):
    """The cookies a browser holds after opening JupyterLab with the token in the URL."""
    def remember(response):
        jar.update(c.split(";")[0].split("=", 1) for c in response.headers.get_list("Set-Cookie"))

    jar = {}
    remember(await raw(jp_fetch, "login"))  # the login page sets the _xsrf cookie
    form = urllib.parse.urlencode({"password": jp_serverapp.identity_provider.token, "_xsrf": jar["_xsrf"]})
    response = await raw(jp_fetch, "login", "POST", {"Cookie": _cookie_header(jar)}, form.encode())
    assert response.code == 302, response.code
    remember(response)
    # the cookie alone logs in: what makes the refusals below mean something
    assert (await raw(jp_fetch, "ailab/backup/status", headers={"Cookie": _cookie_header(jar)})).code == 200
    return jar


def _cookie_header(jar):
    return "; ".join(f"{k}={v}" for k, v in jar.items())


async def test_same_site_request_with_cookie_and_xsrf_is_accepted(jp_serverapp, jp_fetch):
    jar = await browser_cookies(jp_serverapp, jp_fetch)
    cookies = _cookie_header(jar)
    response = await raw(jp_fetch, "ailab/backup/nb-x/restore", "POST",
                         {"Cookie": cookies, "X-XSRFToken": jar["_xsrf"]})
    assert response.code == 404  # past auth and XSRF: the id is unknown


KERNEL_CODE = """
import json, os, urllib.request, urllib.error
def status(path, method="GET"):
    request = urllib.request.Request(os.environ["AILAB_BACKUP_URL"].rstrip("/") + path, method=method,
        headers={"Authorization": "AILabBackup " + os.environ["AILAB_BACKUP_TOKEN"]},
        data=b"{}" if method == "POST" else None)
    try:
        return urllib.request.urlopen(request, timeout=30).status
    except urllib.error.HTTPError as e:
        return e.code
print(json.dumps({p + " " + m: status(p, m) for p, m in [
    ("/ailab/backup/status", "GET"), ("/ailab/backup", "GET"), ("/ailab/backup", "POST"),
    ("/api/contents", "GET"), ("/api/kernels", "GET"), ("/api/sessions", "GET"), ("/api/status", "GET"),
    ("/api/terminals", "POST")]}))
"""


def test_kernel_of_password_only_server_reaches_backup_api_only(password_only_server):
    base, runtime = password_only_server
    seen = json.loads(run_in_new_kernel(base, runtime, "ailab", KERNEL_CODE))
    assert seen["/ailab/backup/status GET"] == 200
    assert seen["/ailab/backup GET"] == 200
    assert seen["/ailab/backup POST"] == 202
    for other in ("/api/contents GET", "/api/kernels GET", "/api/sessions GET", "/api/terminals POST"):
        assert seen[other] in (403, 302), (other, seen[other])
    # without the credential the same requests are refused: the header is what opens the door
    assert requests.get(base + "ailab/backup/status", allow_redirects=False).status_code in (403, 302)
