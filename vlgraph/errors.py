"""Errors the service reports, as exceptions (ingress) and as typed per-item results (models).

Model deployments never raise through a batch: a failed item becomes an :class:`ItemError`
next to its neighbours' results. The ingress turns either form into an HTTP response in one
place (``deployments.ingress.errors``), so every route answers errors the same way.
"""

from __future__ import annotations

import math

from pydantic import BaseModel


class ItemError(BaseModel):
    """Why one item of a request failed; ``status`` is the HTTP status it maps to."""

    status: int
    code: str
    message: str


class ServiceError(Exception):
    """An error with an HTTP status and a message written for the client."""

    status = 500
    code = "internal_error"

    #: The request field the error is about (OpenAI's ``param``), when one is.
    param: str | None = None

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        param: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if param is not None:
            self.param = param

    def as_item_error(self) -> ItemError:
        """The same error as a per-item result."""
        return ItemError(status=self.status, code=self.code, message=self.message)

    @classmethod
    def from_item_error(cls, error: ItemError) -> ServiceError:
        """Raise-able form of a per-item result."""
        return cls(error.message, code=error.code, status=error.status)


class BadRequestError(ServiceError):
    """The request is malformed in a way the schema cannot express."""

    status = 400
    code = "bad_request"


class ForbiddenPathError(ServiceError):
    """A path points outside the folder the service may read."""

    status = 403
    code = "path_outside_image_root"


class UnauthorizedError(ServiceError):
    """401: credentials are missing."""

    status = 401
    code = "missing_api_key"


class ForbiddenError(ServiceError):
    """403: credentials are wrong, or the operation is disabled here."""

    status = 403
    code = "forbidden"


class NotFoundError(ServiceError):
    """The named file or resource does not exist."""

    status = 404
    code = "not_found"


class PayloadTooLargeError(ServiceError):
    """The input is bigger than a configured limit."""

    status = 413
    code = "payload_too_large"


class UnsupportedMediaTypeError(ServiceError):
    """The input is not an image of an accepted format."""

    status = 415
    code = "unsupported_media_type"


class UnprocessableImageError(ServiceError):
    """The input looks like an image but cannot be decoded."""

    status = 422
    code = "undecodable_image"


class ServiceUnavailableError(ServiceError):
    """Overload or a failed replica: the client should retry after ``retry_after_s``."""

    status = 503
    code = "overloaded"
    DEFAULT_RETRY_AFTER_S = 1

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        retry_after_s: float | None = None,
        param: str | None = None,
    ):
        super().__init__(message, code=code, status=status, param=param)
        # HTTP's Retry-After is whole seconds.
        self.retry_after_s = max(1, math.ceil(retry_after_s or self.DEFAULT_RETRY_AFTER_S))


class ModelUnavailableError(ServiceError):
    """A model's weights cannot be found or loaded (configuration or start-up problem)."""

    status = 503
    code = "model_unavailable"


class InferenceError(ServiceError):
    """The model failed on a valid input; the message is safe to show."""

    status = 500
    code = "inference_failed"


class UnsupportedModelError(ValueError):
    """A checkpoint nothing in vlgraph can serve for the task a profile gives it (no family
    for a chat model, no text-to-image pipeline for a generator); the message names the
    model, what was found and what is supported. Raised when the profile is built."""
