"""moto's S3 server on 127.0.0.1 for the checkpoint tests (never real AWS).

The dummy credentials are put in the environment by conftest before Ray starts, so that
coordinator actors writing checkpoints to moto see them as they would see real ones: from the
standard AWS variables, never from a URI.
"""

from __future__ import annotations

import socket
import uuid

import boto3
from botocore.exceptions import ClientError
from moto.server import ThreadedMotoServer

BUCKET = "gecko-checkpoints"
# Not "testing": gecko_actors' redaction masks the values of secret-named environment variables
# everywhere, so a common word would be masked in other tests' messages too.
KEY_ID, SECRET = "moto-dummy-key-id", "moto-dummy-secret-key"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": KEY_ID,
    "AWS_SECRET_ACCESS_KEY": SECRET,
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def s3_client(port: int):
    return boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{port}",
        region_name="us-east-1",
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
    )


class MotoS3:
    """A moto S3 server that can be stopped and started again on the same port (an outage);
    moto keeps its buckets in the process, so the data survives the outage."""

    def __init__(self, bucket: str = BUCKET) -> None:
        self.port = free_port()
        self.bucket = bucket
        self._server: ThreadedMotoServer | None = None

    def start(self) -> MotoS3:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        try:
            s3_client(self.port).create_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "BucketAlreadyOwnedByYou":
                raise
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def uri(self, prefix: str | None = None) -> str:
        """A fresh prefix in the bucket (one per test), as a checkpoint URI."""
        return (
            f"s3://{self.bucket}/{prefix or uuid.uuid4().hex}"
            f"?endpoint_override=127.0.0.1:{self.port}&scheme=http&region=us-east-1"
        )
