"""The exceptions downsize raises. Messages say what to do next."""


class DownsizeError(Exception):
    """Base of every error downsize raises on purpose."""


class ConfigError(DownsizeError):
    """A setting, flag or config file is wrong."""


class StoreError(DownsizeError):
    """The store could not be opened, migrated, read or written."""


class ImportDataError(DownsizeError):
    """An input file for an importer is missing or malformed."""


class InvalidRequestError(DownsizeError):
    """A client sent a request the gateway cannot serve (maps to HTTP 400)."""

    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.param = param
        self.status = status


class UpstreamError(DownsizeError):
    """The upstream LLM could not be reached or answered badly."""


class NoSpecialistError(DownsizeError):
    """No trained or live specialist exists where one was asked for."""


class TrainingError(DownsizeError):
    """Training could not start or finish (missing extras, no data, bad budget)."""
