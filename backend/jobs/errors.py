"""The exception a job handler raises to fail its job with a message the user can act on.

To stop (cancel, shutdown) a handler lets ``backend.core.hooks.Stopped`` propagate; domain errors from
``backend.services`` are shown as-is too.
"""


class JobError(Exception):
    """The job cannot succeed for a reason the user can fix; the message is shown as-is (no traceback)."""
