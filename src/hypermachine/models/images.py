"""An image of the catalogue, as listed."""

from __future__ import annotations

from .base import _Strict

__all__ = ["ImageInfo"]


class ImageInfo(_Strict):
    name: str
    description: str
    os: str
    boot: str
    format: str
    source: str
    available: bool
    size_bytes: int | None = None
    url: str | None = None
    sha256: str | None = None
    firmware: str | None = None
    ready_marker: str | None = None
    stand_in: str | None = None
