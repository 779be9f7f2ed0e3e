"""Images named by URL in ``/v1`` bodies: ``data:image/...;base64,...`` URIs, and http(s)
URLs fetched by the SSRF-safe fetcher (:class:`~vlgraph.safe_fetch.ImageFetcher`, which
refuses every other scheme), with the byte, pixel and format checks of every other image
route. An error names the field it is about (OpenAI's ``param``)."""

from __future__ import annotations

import re

from deployments.ingress.context import IngressContext
from deployments.ingress.routes.embeddings import Embedding
from vlgraph.errors import BadRequestError, PayloadTooLargeError, ServiceError

#: ``data:<media type>[;parameters];base64,<payload>``, the only data URI form accepted.
_DATA_URI = re.compile(r"data:(?P<type>[^;,]*)(?P<params>(?:;[^;,]*)*),(?P<payload>.*)", re.S)


class ImageUrls:
    """Reads the images of one request, counting them against the per-request limit."""

    def __init__(self, context: IngressContext):
        self._embedding = Embedding(context)
        self._limit = context.config.max_upload_images

    def check_count(self, count: int, param: str) -> None:
        """413 ``too_many_images`` past the per-request limit."""
        if count > self._limit:
            raise PayloadTooLargeError(
                f"{count} images in one request; the limit is {self._limit}",
                code="too_many_images",
                param=param,
            )

    async def read(self, url: str, param: str) -> bytes:
        """The image bytes ``url`` names; a 4xx naming ``param`` when it cannot be had."""
        try:
            if url[:5].lower() == "data:":
                return await self._embedding.decoded_base64(data_uri_payload(url), None)
            # Any other scheme, and every malformed URL, is the fetcher's to refuse.
            return await self._embedding.fetched(url, None)
        except ServiceError as error:
            if error.code == "invalid_base64":
                error.message = "the data URI's payload is not valid base64 (standard alphabet)"
            error.message = f"{param}: {error.message}"
            error.param = param
            raise


def data_uri_payload(uri: str) -> str:
    """The base64 payload of ``data:image/<type>;base64,<payload>``; 400
    ``invalid_data_uri`` saying what is wrong with any other form."""
    match = _DATA_URI.fullmatch(uri)
    if match is None:
        raise BadRequestError(
            "a data URI needs a comma before its payload: data:image/png;base64,<base64>",
            code="invalid_data_uri",
        )
    media_type = match["type"].strip().lower()
    if not media_type.startswith("image/"):
        raise BadRequestError(
            f"a data URI of media type {media_type or 'text/plain'!r}; send an image "
            "(data:image/png;base64,...)",
            code="invalid_data_uri",
        )
    if "base64" not in (param.strip().lower() for param in match["params"].split(";")):
        raise BadRequestError(
            "a data URI without ;base64: encode the image as base64 (data:image/png;base64,...)",
            code="invalid_data_uri",
        )
    return match["payload"]
