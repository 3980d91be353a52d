"""Exceptions a job handler raises to end its job in a specific way."""


class JobError(Exception):
    """The job cannot succeed for a reason the user can fix; the message is shown as-is (no traceback)."""


class JobInterrupted(Exception):
    """Raised at a chunk boundary when the job must stop (cancel requested or worker shutting down)."""
