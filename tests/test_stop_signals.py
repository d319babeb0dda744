"""StopSignals: the first signal asks to stop, the second stops now."""

import signal

import pytest

from mamlpp_tf import stop_signals


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_first_signal_is_a_request_second_stops_at_once(signum):
    before = signal.getsignal(signum)
    with stop_signals.StopSignals() as stop:
        assert stop.signum is None
        signal.raise_signal(signum)  # Handled here, before the next line.
        assert stop.signum == signum
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signum)
    assert signal.getsignal(signum) is before


def test_interrupted_names_the_signal_and_how_to_resume():
    with stop_signals.StopSignals() as stop:
        signal.raise_signal(signal.SIGTERM)
    error = stop.interrupted("at epoch 3, iteration 7", "runs/a")
    assert isinstance(error, stop_signals.TrainingInterrupted)
    assert error.signum == signal.SIGTERM
    assert str(error) == (
        "Stopped by SIGTERM at epoch 3, iteration 7; the checkpoint is in "
        "runs/a. Rerun the same command to resume."
    )
