"""The ``gs://`` backend: Google Cloud Storage through pyarrow, plus google-cloud-storage for
what pyarrow's GCS filesystem lacks.

pyarrow reads, writes and deletes; google-cloud-storage makes the create-if-absent upload
(``if_generation_match=0``) that fences every commit, and lists folders (pyarrow's GCS
filesystem sees only folders it made marker objects for, so runs written object by object
would not be found). google-cloud-storage is optional (the ``gcs`` extra) and imported at
first use: without it the first write or listing is a ConfigurationError saying what to
install. Both clients reach the same endpoint with the same kind of credentials (see
:func:`_gcs_settings`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from gecko_actors.checkpoint.backends import ArrowBackend, Entry
from gecko_actors.checkpoint.location import Location
from gecko_actors.exceptions import ConfigurationError, UserError

if TYPE_CHECKING:
    from pyarrow.fs import FileSystem

__all__ = ["GcsBackend"]

# Each request is retried briefly by the client: the store retries with its own backoff, and
# google-cloud-cpp's default (minutes) would hold a commit for that long when GCS is down.
_GCS_RETRY_SECONDS = 1.0
_GCS_TIMEOUT = 60.0  # seconds for one google-cloud-storage request


class GcsBackend(ArrowBackend):
    """Google Cloud Storage: pyarrow for reads, writes and deletes; google-cloud-storage for
    what pyarrow's GCS filesystem lacks: the create-if-absent upload that fences a commit
    (``if_generation_match=0``), and listings (pyarrow lists only the folders it created
    marker objects for, so runs written object by object would not be found).

    Both clients talk to the same endpoint with the same kind of credentials: the URI's
    ``endpoint_override``/``scheme``, else ``STORAGE_EMULATOR_HOST`` (an emulator), else GCS;
    over https with Google's default credentials, over http with none (see
    :func:`_gcs_settings`).
    """

    def __init__(self, location: Location) -> None:
        super().__init__(location)
        self._settings = _gcs_settings(location)  # a bad option is refused here, not later
        self._client: Any = None
        bucket, _, prefix = location.root.partition("/")
        self._bucket_name, self._prefix = bucket, prefix.strip("/")

    def _make_filesystem(self) -> FileSystem:
        from datetime import timedelta

        from pyarrow import fs

        settings = self._settings
        kwargs: dict[str, Any] = {
            "anonymous": settings["anonymous"],
            "scheme": settings["scheme"],
            "retry_time_limit": timedelta(seconds=settings["retry_limit_seconds"]),
        }
        if settings["endpoint"]:
            kwargs["endpoint_override"] = settings["endpoint"]
        for name, arg in (("project_id", "project_id"), ("location", "default_bucket_location")):
            if settings.get(name):
                kwargs[arg] = settings[name]
        return fs.GcsFileSystem(**kwargs)

    def _make_client(self) -> Any:
        try:
            from google.cloud import storage
        except ImportError:
            raise ConfigurationError(
                f"gs:// checkpoints ({self.location.display()!r}) need google-cloud-storage: "
                "pyarrow's GCS filesystem can neither create an object only if it is absent "
                "(the fence of a commit) nor list folders it did not create",
                hint="pip install google-cloud-storage",
            ) from None
        settings = self._settings
        # An explicit project (None included) spares the client a lookup of the default one.
        kwargs: dict[str, Any] = {"project": settings.get("project_id") or None}
        if settings["endpoint"]:
            kwargs["client_options"] = {
                "api_endpoint": f"{settings['scheme']}://{settings['endpoint']}"
            }
        if settings["anonymous"]:
            from google.auth.credentials import AnonymousCredentials

            kwargs["credentials"] = AnonymousCredentials()
        try:
            return storage.Client(**kwargs)
        except Exception as exc:  # google.auth's DefaultCredentialsError, mostly
            raise ConfigurationError(
                f"cannot open {self.location.display()!r}: {type(exc).__name__}: {exc}",
                hint="set GOOGLE_APPLICATION_CREDENTIALS (or run `gcloud auth "
                "application-default login`); add anonymous=true to the URI for a public "
                "bucket or an emulator",
            ) from None

    def client(self) -> Any:
        """The google-cloud-storage client, made at first use (shared by threads, as its
        own transfer manager does)."""
        with self._lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _key(self, path: str) -> str:
        return f"{self._prefix}/{path}" if self._prefix and path else (self._prefix or path)

    def put_if_absent(self, path: str, data: bytes) -> bool:
        """An upload with ``if_generation_match=0``: GCS refuses it (412) if the object
        exists. Not retried by the client: the store retries, and reads back what a retry
        after a lost reply finds."""
        from google.api_core import exceptions as gexc

        blob = self.client().bucket(self._bucket_name).blob(self._key(path))
        try:
            blob.upload_from_string(data, if_generation_match=0, retry=None, timeout=_GCS_TIMEOUT)
        except gexc.PreconditionFailed:
            return False
        except gexc.GoogleAPIError as exc:
            raise OSError(f"GCS error: {exc}") from exc
        return True

    def list(self, folder: str) -> list[Entry]:
        """One listing with ``delimiter="/"``: the folder's objects, and its sub-folders
        (the prefixes GCS reports), whether or not a marker object names them."""
        from google.api_core import exceptions as gexc

        key = self._key(folder)
        prefix = f"{key}/" if key else ""
        try:
            pages = self.client().list_blobs(
                self._bucket_name, prefix=prefix, delimiter="/", retry=None, timeout=_GCS_TIMEOUT
            )
            files = [
                Entry(blob.name[len(prefix) :], blob.size, False)
                for blob in pages
                if blob.name != prefix  # a folder marker (pyarrow's create_dir), not a file
            ]
        except gexc.NotFound:  # no bucket: nothing in it
            return []
        except gexc.GoogleAPIError as exc:
            raise OSError(f"GCS error: {exc}") from exc
        # The iterator collects the prefixes of every page it went through.
        folders = sorted(name[len(prefix) :].rstrip("/") for name in pages.prefixes)
        return files + [Entry(name, None, True) for name in folders]

    def delete(self, folder: str) -> None:
        """Delete every object under the folder (pyarrow deletes them in parallel); a folder
        that does not exist is no error (pyarrow's ``delete_dir`` calls it one)."""
        self.filesystem().delete_dir_contents(self._abs(folder), missing_dir_ok=True)


def _gcs_settings(location: Location) -> dict[str, Any]:
    """The endpoint, scheme, credentials and limits shared by both GCS clients (the URI's
    options are already checked and parsed).

    Without ``anonymous=``, credentials are sent over https only: an endpoint reached over
    plain http (an emulator, a test server) gets none, since a token sent there could be
    read on the way; ``STORAGE_EMULATOR_HOST`` stands for an emulator, reached the same way.
    """
    options = dict(location.options)
    emulator = os.environ.get("STORAGE_EMULATOR_HOST", "").strip()
    if options.get("endpoint_override"):
        written_scheme, host = _split_endpoint(str(options["endpoint_override"]))
    elif emulator:  # an address without a scheme is plain http, as google-cloud-storage reads it
        written_scheme, host = _split_endpoint(emulator)
        written_scheme = written_scheme or "http"
    else:
        written_scheme, host = None, ""
    scheme = options.get("scheme") or written_scheme or "https"
    if scheme not in ("http", "https"):
        raise UserError(
            f"the GCS endpoint of {location.display()!r} has the scheme {scheme!r:.40}",
            hint="use http:// or https:// (in STORAGE_EMULATOR_HOST or endpoint_override)",
        )
    anonymous = options.get("anonymous")
    return {
        "endpoint": host or None,
        "scheme": scheme,
        "anonymous": scheme == "http" if anonymous is None else anonymous,
        "project_id": options.get("project_id"),
        "location": options.get("location"),
        "retry_limit_seconds": options.get("retry_limit_seconds", _GCS_RETRY_SECONDS),
    }


def _split_endpoint(endpoint: str) -> tuple[str | None, str]:
    """``http://host:port/`` → ``("http", "host:port")``; ``host:port`` → ``(None, ...)``."""
    scheme, sep, host = endpoint.strip().rpartition("://")
    return (scheme.lower() if sep else None), host.rstrip("/")
