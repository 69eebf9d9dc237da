"""The exceptions sdkit raises for things a user can fix. Each message is one line."""


class SdkitError(Exception):
    """Base class of every error sdkit raises on purpose."""


class CheckpointError(SdkitError, ValueError):
    """A model file or folder cannot be used: unreadable, unsafe, incomplete or inconsistent."""


class HubError(SdkitError):
    """A Hub repo could not be resolved to local files (offline, unreachable, not found)."""


class BackendError(SdkitError):
    """The requested backend, device or dtype is not available here."""


class Cancelled(SdkitError):
    """Generation was cancelled by the callback."""
