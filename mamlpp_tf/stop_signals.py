"""SIGINT/SIGTERM as a stop request that the training loop polls.

A long run must be stoppable at any moment without losing work: the first
signal only sets a flag; the loop finishes the current meta-step, saves a
checkpoint and raises `TrainingInterrupted`.
"""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped the run after saving a checkpoint.

    Attributes:
      signum: the signal received.
    """

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


class StopSignals:
    """Turns SIGINT/SIGTERM into a request polled by the loop.

    The first signal sets `signum`; the loop checkpoints and stops after
    the current meta-step. A second signal stops at once (KeyboardInterrupt).
    """

    def __init__(self):
        self.signum = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            log.warning(
                "Not in the main thread: SIGINT/SIGTERM will stop "
                "training without a final checkpoint."
            )
            return self
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        del frame  # Unused.
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning(
            "Received %s: saving a checkpoint after the current step, then "
            "stopping. Send it again to stop at once.",
            signal.Signals(signum).name,
        )

    def __exit__(self, *exc_info):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def interrupted(self, where: str, workdir) -> TrainingInterrupted:
        """The exception to raise once the checkpoint is saved."""
        name = signal.Signals(self.signum).name
        return TrainingInterrupted(
            self.signum,
            f"Stopped by {name} {where}; the checkpoint is in {workdir}. "
            "Rerun the same command to resume.",
        )
