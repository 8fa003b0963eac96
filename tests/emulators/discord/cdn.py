"""The emulated CDN: attachment bytes at signed, expiring URLs on the emulator itself.

:meth:`Cdn.attachment` hosts bytes and returns the attachment object Discord would send.
A URL serves its bytes while it is unexpired (``attachment_url_lifetime``, a day by
default) and carries its signature; otherwise, like Discord's CDN, it answers 404 "This
content is no longer available." For tests of slow or vanished downloads:

* :meth:`Cdn.delay_attachment`: the bytes come only after some seconds;
* :meth:`Cdn.hold_attachment`: requests wait until the test releases the returned
  :class:`~tests.emulators.hold.Hold` (``await hold.reached()`` says one is waiting);
* :meth:`Cdn.remove_attachment`: the attachment is gone (its message was deleted): 404
  from now on, a request held or delayed at that moment included.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from PIL import Image

from tests.emulators.discord.world import World, snowflake
from tests.emulators.hold import Hold

ATTACHMENT_URL_LIFETIME = 86_400.0  # seconds a CDN URL stays valid once made
GONE_TEXT = "This content is no longer available."  # Discord's CDN 404 body


@dataclass
class Blob:
    """Bytes on the emulated CDN, what their URL must carry, and how they are served."""

    data: bytes = field(repr=False)
    expires_at: float  # Unix seconds
    signature: str  # the URL's hm parameter
    delay: float = 0.0  # seconds before the bytes are sent
    hold: Hold | None = None  # requests wait here until released
    gone: bool = False  # deleted: 404 like an expired URL


class Cdn(World):
    """Hosts attachments and serves their bytes under ``/cdn/attachments/``."""

    def __init__(self, *, token: str) -> None:
        super().__init__(token=token)
        self.attachment_url_lifetime = ATTACHMENT_URL_LIFETIME
        self._blobs: dict[str, Blob] = {}  # "<attachment id>/<filename>" -> bytes
        self._blob_by_id: dict[str, Blob] = {}

    def attachment(
        self,
        data: bytes,
        filename: str,
        content_type: str | None = None,
        *,
        width: int | None = None,
        height: int | None = None,
    ) -> dict[str, Any]:
        """Host ``data`` on the emulated CDN; returns the attachment object (with
        ``width``/``height`` when given, as Discord adds them for images)."""
        attachment_id = snowflake()
        key = f"{attachment_id}/{filename}"
        now = time.time()
        blob = Blob(data, now + self.attachment_url_lifetime, secrets.token_hex(32))
        self._blobs[key] = blob
        self._blob_by_id[str(attachment_id)] = blob
        expires = int(blob.expires_at)
        query = f"ex={expires:x}&is={int(now):x}&hm={blob.signature}&"
        url = f"{self.base_url}/cdn/attachments/{self.channel.id}/{key}?{query}"
        payload = {
            "id": str(attachment_id),
            "filename": filename,
            "size": len(data),
            "url": url,
            "proxy_url": url,
        }
        if content_type:
            payload["content_type"] = content_type
        if width is not None and height is not None:
            payload |= {"width": width, "height": height}
        return payload

    def image_attachment(self, name: str, data: bytes) -> dict[str, Any]:
        """Host an image, with its content type and size as Discord gives them."""
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            mime = Image.MIME.get(image.format or "", "application/octet-stream")
        return self.attachment(data, name, mime, width=width, height=height)

    def _blob(self, attachment: dict[str, Any]) -> Blob:
        blob = self._blob_by_id.get(str(attachment["id"]))
        if blob is None:
            raise KeyError(f"attachment {attachment['id']} is not on the emulated CDN")
        return blob

    def delay_attachment(self, attachment: dict[str, Any], seconds: float) -> None:
        """Serve ``attachment``'s bytes only ``seconds`` after each request arrives."""
        self._blob(attachment).delay = seconds

    def hold_attachment(self, attachment: dict[str, Any]) -> Hold:
        """Make requests for ``attachment`` wait until the returned hold is released."""
        blob = self._blob(attachment)
        blob.hold = Hold()
        return blob.hold

    def remove_attachment(self, attachment: dict[str, Any]) -> None:
        """The attachment is gone (its message was deleted): its URL answers 404."""
        self._blob(attachment).gone = True

    async def _cdn(self, request: web.Request) -> web.Response:
        """Serve an attachment while its URL is unexpired and carries its signature."""
        key = "/".join(request.path.split("/")[4:])
        blob = self._blobs.get(key)
        hold = blob.hold if blob is not None else None
        if hold is not None and not await hold.passage(self._stopping):
            return web.Response(status=503, text="The emulator is stopping.")
        delay = blob.delay if blob is not None else 0.0
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
        if (
            blob is None
            or blob.gone
            or request.query.get("hm") != blob.signature
            or time.time() >= blob.expires_at
        ):
            # What Discord's CDN answers for an expired, unsigned or deleted attachment.
            return web.Response(status=404, text=GONE_TEXT)
        return web.Response(body=blob.data, content_type="application/octet-stream")
