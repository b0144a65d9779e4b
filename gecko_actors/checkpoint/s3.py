"""The boto3 side of the ``s3://`` backend: conditional PUTs, which pyarrow's S3FileSystem
lacks, and the check that the server honours them.

A conditional PUT (``If-None-Match: *``) is the fence of every commit. S3 answers 412 if the
key exists; an S3-compatible server that ignores the header stores the object anyway, so two
engines would both "win" a seq. :func:`check_conditional_writes` finds that out once per
backend, before its first fenced write, by creating one probe object twice.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

from gecko_actors.exceptions import ConfigurationError

__all__ = ["boto3_s3_client", "check_conditional_writes", "put_if_absent"]

#: The folder (under the store's root) of the conditional-write probe's objects; a dot
#: name, which no run_id can have.
PROBE_FOLDER = ".gecko-fence-probe"


def put_if_absent(client: Any, bucket: str, key: str, data: bytes) -> bool:
    """A PUT with ``If-None-Match: *``: False if S3 answers 412 (the key exists). A refused or
    failed request is an ``OSError`` (which the store retries)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
    except ClientError as exc:
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if error.get("Code") == "PreconditionFailed" or status == 412:
            return False
        if error.get("Code") == "NotImplemented" or status == 501:
            raise _unsupported(client, f"it answered {error.get('Code', status)}") from exc
        # 409 ConditionalRequestConflict (a concurrent conditional write) and the rest
        # are retried by the store like any failed request.
        raise OSError(f"S3 error {error.get('Code', status)}: {error.get('Message')}") from exc
    except BotoCoreError as exc:
        raise OSError(str(exc)) from exc
    return True


def check_conditional_writes(client: Any, bucket: str, prefix: str) -> None:
    """Put one probe object under ``prefix`` twice, both with ``If-None-Match: *``; the second
    must be refused. A :class:`ConfigurationError` if it is not (the server cannot fence runs),
    an ``OSError`` if a request fails. The probe is deleted afterwards, if possible."""
    key = "/".join(part for part in (prefix, PROBE_FOLDER, uuid.uuid4().hex) if part)
    data = b"gecko_actors checks that this server honours If-None-Match"
    try:
        if not put_if_absent(client, bucket, key, data):
            raise OSError(f"the conditional-write probe {key!r} existed before it was written")
        if put_if_absent(client, bucket, key, data):
            raise _unsupported(client, "a second PUT of one key with If-None-Match: * succeeded")
    finally:
        with contextlib.suppress(Exception):  # best effort: a leftover probe is harmless
            client.delete_object(Bucket=bucket, Key=key)


def _unsupported(client: Any, evidence: str) -> ConfigurationError:
    endpoint = getattr(getattr(client, "meta", None), "endpoint_url", None) or "S3"
    return ConfigurationError(
        f"the S3 server at {endpoint!r} does not support conditional writes "
        f"(If-None-Match: *; {evidence}), so runs stored there cannot be fenced: two engines "
        "could both commit the same step",
        hint="use AWS S3 or an S3-compatible server that supports conditional writes "
        "(If-None-Match on PUT), or a file:// store",
        endpoint=endpoint,
    )


def boto3_s3_client(options: dict[str, Any]) -> Any:
    """A boto3 S3 client configured like pyarrow's ``S3FileSystem`` from the same URI
    options; credentials come from boto3's standard chain (AWS_* variables, profile, role)."""
    try:
        import boto3
        from botocore import UNSIGNED
        from botocore.config import Config
    except ImportError:  # boto3 is a dependency; a trimmed environment may still lack it
        raise ConfigurationError(
            "fenced commits to s3:// need boto3 (pyarrow's S3 filesystem has no conditional PUT)",
            hint="pip install boto3",
        ) from None
    endpoint = options.get("endpoint_override")
    if endpoint and "://" not in endpoint:
        endpoint = f"{options.get('scheme', 'https')}://{endpoint}"
    # pyarrow addresses buckets by path behind a custom endpoint, by host name otherwise.
    style = "virtual" if options.get("force_virtual_addressing") or not endpoint else "path"
    config: dict[str, Any] = {
        # The store's own loop retries, with its backoff.
        "retries": {"max_attempts": 1, "mode": "standard"},
        "s3": {"addressing_style": style},
    }
    if "connect_timeout" in options:
        config["connect_timeout"] = options["connect_timeout"]
    if "request_timeout" in options:
        config["read_timeout"] = options["request_timeout"]
    if options.get("anonymous"):
        config["signature_version"] = UNSIGNED
    session = _assumed_role_session(options) if options.get("role_arn") else boto3.Session()
    return session.client(
        "s3",
        region_name=options.get("region") or None,
        endpoint_url=endpoint or None,
        verify=options.get("tls_ca_file_path") or None,
        config=Config(**config),
    )


def _assumed_role_session(options: dict[str, Any]) -> Any:
    """A boto3 session whose credentials assume ``role_arn`` (refreshed before they expire),
    as pyarrow does for the same URI option."""
    import boto3
    import botocore.session
    from botocore.credentials import (
        AssumeRoleCredentialFetcher,
        CredentialProvider,
        DeferredRefreshableCredentials,
    )

    extra = {"RoleSessionName": options.get("session_name") or "gecko-actors"}
    if options.get("external_id"):
        extra["ExternalId"] = options["external_id"]
    source = botocore.session.Session()  # the standard chain's credentials assume the role
    fetcher = AssumeRoleCredentialFetcher(
        client_creator=source.create_client,
        source_credentials=source.get_credentials(),
        role_arn=options["role_arn"],
        extra_args=extra,
    )

    class AssumeRole(CredentialProvider):
        METHOD = "gecko-assume-role"

        def load(self) -> Any:
            return DeferredRefreshableCredentials(fetcher.fetch_credentials, self.METHOD)

    core = botocore.session.Session()
    core.get_component("credential_provider").insert_before("env", AssumeRole())
    return boto3.session.Session(botocore_session=core)
