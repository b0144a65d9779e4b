"""Images for multimodal messages: URLs, data URLs and local files (read as base64)."""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from gecko_actors.exceptions import UserError

DEFAULT_MAX_IMAGE_BYTES = 20 * 1024 * 1024
_DATA_URL = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*?);base64,(?P<data>.*)$", re.S
)
# Magic numbers win over file extensions: a renamed file is still detected correctly.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),  # weak on its own; providers reject a non-image anyway
)


class MediaResource(BaseModel):
    """An image given either by URL or inline as base64 data with its MIME type."""

    model_config = ConfigDict(frozen=True)

    url: str | None = None
    data: str | None = None
    mime_type: str | None = None
    detail: Literal["auto", "low", "high"] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> MediaResource:
        if (self.url is None) == (self.data is None):
            raise ValueError("an image needs exactly one source: url or base64 data")
        if self.data is not None and not self.mime_type:
            raise ValueError("inline image data needs a mime_type")
        return self

    def to_url(self) -> str:
        """The URL form OpenAI-compatible APIs accept (a data URL for inline data)."""
        return self.url if self.url is not None else f"data:{self.mime_type};base64,{self.data}"

    @classmethod
    def from_url(cls, url: str, detail: str | None = None) -> MediaResource:
        """Parse an ``http(s)://`` or ``data:`` URL back into a resource."""
        match = _DATA_URL.match(url)
        if match:
            return cls(
                data=match["data"],
                mime_type=match["mime"] or "application/octet-stream",
                detail=detail,
            )
        return cls(url=url, detail=detail)


def sniff_mime(data: bytes) -> str | None:
    """The image MIME type that ``data`` starts with, from magic bytes; ``None`` if not a
    supported image. File names are not trusted: a text file named ``x.png`` is not an image."""
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def load_image(
    source: str | Path | bytes | MediaResource,
    *,
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    detail: Literal["auto", "low", "high"] | None = None,
) -> MediaResource:
    """Turn an image URL, data URL, local path or raw bytes into a :class:`MediaResource`.

    Remote URLs are passed through (the provider fetches them); local files and bytes are read
    and base64-encoded, refusing anything over ``max_bytes`` or not recognisably an image.
    """
    if isinstance(source, MediaResource):
        return source
    if isinstance(source, bytes):
        return _from_bytes(source, None, max_bytes, detail)
    text = str(source)
    if isinstance(source, str) and text.startswith(("http://", "https://")):
        return MediaResource(url=text, detail=detail)
    if isinstance(source, str) and text.startswith("data:"):
        return _from_data_url(text, max_bytes, detail)
    return _from_file(Path(text), max_bytes, detail)


def _from_data_url(url: str, max_bytes: int, detail: str | None) -> MediaResource:
    match = _DATA_URL.match(url)
    if not match or not match["mime"]:
        raise UserError(
            "invalid image data URL: expected 'data:<mime>;base64,<data>'",
            hint="base64-encode the image and give its MIME type: data:image/png;base64,...",
        )
    try:
        raw = base64.b64decode(match["data"], validate=True)
    except binascii.Error as exc:
        raise UserError(f"image data URL holds invalid base64: {exc}") from None
    _check_size(len(raw), max_bytes, "data URL")
    if sniff_mime(raw) is None:
        raise UserError(
            f"image data URL ({match['mime']}) does not hold a PNG, JPEG, GIF, WEBP or BMP image",
            hint="encode one of the supported image formats",
        )
    return MediaResource(data=match["data"], mime_type=match["mime"], detail=detail)


def _from_file(path: Path, max_bytes: int, detail: str | None) -> MediaResource:
    if not path.is_file():
        raise UserError(
            f"image {str(path)!r} is not a file, an http(s) URL or a data URL",
            hint="pass an existing local path, a URL, a data URL or the image bytes",
            path=str(path),
        )
    _check_size(path.stat().st_size, max_bytes, repr(str(path)))
    return _from_bytes(path.read_bytes(), path.name, max_bytes, detail)


def _from_bytes(raw: bytes, filename: str | None, max_bytes: int, detail: str | None):
    _check_size(len(raw), max_bytes, repr(filename) if filename else "image bytes")
    mime = sniff_mime(raw)
    if mime is None:
        raise UserError(
            f"cannot tell the image type of {filename or 'the given bytes'!r}",
            hint="use PNG, JPEG, GIF, WEBP or BMP data",
        )
    encoded = base64.b64encode(raw).decode("ascii")
    return MediaResource(data=encoded, mime_type=mime, detail=detail)


def _check_size(size: int, max_bytes: int, what: str) -> None:
    if size > max_bytes:
        raise UserError(
            f"image {what} is {size} bytes; the limit is {max_bytes}",
            hint="resize the image or raise max_image_bytes (GECKO_MAX_IMAGE_BYTES)",
        )
