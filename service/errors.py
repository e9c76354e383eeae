"""Domain errors. Only the API layer turns them into HTTP responses (see service/app.py)."""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every error the service reports to a client."""

    status_code = 500

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param  # the request field at fault, when there is one


class InvalidInput(ServiceError):
    status_code = 400


class PayloadTooLarge(ServiceError):
    status_code = 413


class UnsupportedMediaType(ServiceError):
    status_code = 415


class ModelNotFound(ServiceError):
    status_code = 404


class ModelNotReady(ServiceError):
    status_code = 503


class Overloaded(ServiceError):
    status_code = 503

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unauthorized(ServiceError):
    status_code = 401


class Forbidden(ServiceError):
    status_code = 403


class ModelLoadError(ServiceError):
    """A model version could not be loaded; the service keeps serving the others."""

    status_code = 400


class InferenceFailed(ServiceError):
    """onnxruntime refused to run a request that passed every check (a value the graph cannot
    take, or a broken graph): the server's fault as far as the client can tell."""

    status_code = 500


class Cancelled(ServiceError):
    """The client went away; the work stopped early. Nobody is left to read the answer."""

    status_code = 499
