"""Access to the team stack's servers (scripts/team-stack.sh, docker/mlflow/entrypoint.sh).

    python scripts/team_access.py users   as MLflow's admin: the `pipeline` and `viewer` users
    python scripts/team_access.py check   this machine's credentials against Prefect, MLflow, S3

Secrets come from the environment only (never from the command line, never printed):
MLFLOW_AUTH_ADMIN_PASSWORD, SLADE_MLFLOW_PIPELINE_PASSWORD and SLADE_MLFLOW_VIEWER_PASSWORD
for `users`; the client variables (PREFECT_API_AUTH_STRING, MLFLOW_TRACKING_USERNAME /
PASSWORD, AWS_*, REQUESTS_CA_BUNDLE / SSL_CERT_FILE) for `check`.
"""

from __future__ import annotations

import base64
import os
import sys

import requests

# MLflow's users, one per role. default_permission READ (the auth config) lets every
# authenticated user read; the pipeline creates the experiment and the registered models,
# so it holds MANAGE on them and is the only non-admin user that may move their aliases.
PIPELINE_USER = "pipeline"
VIEWER_USER = "viewer"
TIMEOUT = 15


class AccessError(Exception):
    """A server refused this machine's credentials or could not be reached."""


def mlflow_users() -> None:
    """Create (or reset the password of) the pipeline and viewer users, as the admin."""
    uri = os.environ["MLFLOW_TRACKING_URI"].rstrip("/")
    admin = (
        os.environ.get("MLFLOW_AUTH_ADMIN_USERNAME") or "admin",
        _env("MLFLOW_AUTH_ADMIN_PASSWORD"),
    )
    api = f"{uri}/api/2.0/mlflow/users"
    for username, variable in (
        (PIPELINE_USER, "SLADE_MLFLOW_PIPELINE_PASSWORD"),
        (VIEWER_USER, "SLADE_MLFLOW_VIEWER_PASSWORD"),
    ):
        body = {"username": username, "password": _env(variable)}
        known = requests.get(
            f"{api}/get", params={"username": username}, auth=admin, timeout=TIMEOUT
        )
        if known.status_code == 200:
            reply = requests.patch(f"{api}/update-password", json=body, auth=admin, timeout=TIMEOUT)
        else:
            reply = requests.post(f"{api}/create", json=body, auth=admin, timeout=TIMEOUT)
        if reply.status_code != 200:
            raise AccessError(
                f"MLflow at {uri} refused to set up user {username!r} "
                f"({reply.status_code}: {reply.text[:200]})"
            )
        print(f"mlflow: user {username} ready")


def check() -> None:
    """Fail with what to fix when a server refuses this machine's credentials."""
    _check_prefect()
    _check_mlflow()
    _check_s3()


def _check_prefect() -> None:
    api = os.environ["PREFECT_API_URL"].rstrip("/")
    headers = {}
    if auth := os.environ.get("PREFECT_API_AUTH_STRING"):
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    verify = os.environ.get("SSL_CERT_FILE") or True
    reply = _request(
        "Prefect API",
        "POST",
        f"{api}/work_pools/filter",
        verify=verify,
        headers=headers,
        json={"limit": 1},
    )
    _raise_unless_accepted(
        "the Prefect API",
        api,
        reply,
        "PREFECT_API_AUTH_STRING is wrong: copy prefect-auth again from the server's secrets "
        "directory"
        if auth
        else "PREFECT_API_AUTH_STRING is not set",
    )
    print(f"prefect: {api} accepts this worker")


def _check_mlflow() -> None:
    uri = os.environ["MLFLOW_TRACKING_URI"].rstrip("/")
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    auth = (user, os.environ.get("MLFLOW_TRACKING_PASSWORD", "")) if user else None
    reply = _request(
        "MLflow",
        "GET",
        f"{uri}/api/2.0/mlflow/experiments/search",
        auth=auth,
        params={"max_results": 1},
    )
    _raise_unless_accepted(
        "MLflow",
        uri,
        reply,
        f"the password of MLflow user {user!r} is wrong: copy mlflow-pipeline again from the "
        "server's secrets directory"
        if user
        else "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD are not set",
    )
    print(f"mlflow: {uri} accepts user {user or '(none)'}")


def _check_s3() -> None:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    bucket = os.environ.get("SLADE_RESULTS_BUCKET")
    if not bucket:
        return
    endpoint = os.environ.get("SLADE_S3_ENDPOINT_URL")
    try:
        boto3.client("s3", endpoint_url=endpoint).head_bucket(Bucket=bucket)
    except (BotoCoreError, ClientError) as err:
        raise AccessError(
            f"S3 at {endpoint or 'AWS'} refused bucket {bucket!r}: {err} "
            "(check the AWS_* keys or AWS_SHARED_CREDENTIALS_FILE)"
        ) from None
    print(f"s3: bucket {bucket} reachable")


def _request(what: str, method: str, url: str, **kwargs) -> requests.Response:
    try:
        return requests.request(method, url, timeout=TIMEOUT, **kwargs)
    except requests.exceptions.SSLError as err:
        raise AccessError(
            f"{what} at {url}: the server's TLS certificate is not trusted ({err}); set "
            "SSL_CERT_FILE and REQUESTS_CA_BUNDLE to the proxy's CA certificate"
        ) from None
    except requests.exceptions.RequestException as err:
        raise AccessError(f"{what} at {url} cannot be reached: {err}") from None


def _raise_unless_accepted(what: str, url: str, reply: requests.Response, fix: str) -> None:
    """A refusal (401/403) says `fix`, what to change on this worker; other errors say what
    the server answered."""
    if reply.status_code in (401, 403):
        raise AccessError(
            f"{what} at {url} refused this worker ({reply.status_code}): {fix} "
            "(scripts/team-stack.sh worker-env prints the exports)"
        )
    if not reply.ok:
        raise AccessError(f"{what} at {url} answered {reply.status_code}: {reply.text[:200]}")


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise AccessError(f"{name} is not set")
    return value


if __name__ == "__main__":
    commands = {"users": mlflow_users, "check": check}
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        sys.exit(f"usage: {sys.argv[0]} {'|'.join(commands)}")
    try:
        commands[sys.argv[1]]()
    except AccessError as err:
        sys.exit(f"error: {err}")
