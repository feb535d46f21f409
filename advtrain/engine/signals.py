"""Ctrl-C (SIGINT) and SIGTERM: stop at a safe point, say where, and how to continue.

Why a module of its own: the command line installs the handlers (a library call from a notebook
keeps Python's own KeyboardInterrupt), the training loop only has to offer safe points, and the
two meet here without importing each other.

What a safe point is. Training state is consistent between two optimiser steps: the step counter,
the loader position, the epoch's running sums and every callback agree, which is exactly what a
mid-epoch checkpoint (`trainer.checkpoint_every_steps`) saves. The first signal therefore only
sets a flag while a batch is in flight; the loader asks `checkpoint_now()` before it hands out the
next batch, and the run stops there and writes a checkpoint of that step. Outside the batch loop
(building the model, loading data, the epoch's validation and checkpoint, the final test pass)
there is no such state to save, so the signal stops the run at once and the last checkpoint on
disk stays the one to resume from (every checkpoint is written atomically: an interrupted write
leaves the previous one intact). A second signal always stops at once.

Under torchrun the ranks would stop at different steps and hang in their next collective, so
`install` is a no-op with several processes: the launcher's own signal handling applies.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = [
    "EXIT_CODES",
    "Interrupted",
    "checkpoint_now",
    "in_batch_loop",
    "install",
    "requested",
]

#: The conventional exit codes of a process ended by SIGINT / SIGTERM (128 + signal number).
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
_NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}


class Interrupted(BaseException):
    """The run was stopped by a signal. A BaseException, like KeyboardInterrupt, so that no
    `except Exception` between the signal and the command line swallows it.

    `where` says at what point it stopped (filled in by whoever knows: the trainer's epoch and
    step); `checkpoint` is the file to resume from, if any; `saved` whether it was written for
    this stop (else it is the last one written before it).
    """

    def __init__(self, signum: int, *, deferred: bool) -> None:
        super().__init__(_NAMES.get(signal.Signals(signum), str(signum)))
        self.signum = int(signum)
        self.deferred = deferred
        self.where: str | None = None
        self.checkpoint: Path | None = None
        self.saved = False

    @property
    def name(self) -> str:
        return _NAMES.get(signal.Signals(self.signum), f"signal {self.signum}")

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(signal.Signals(self.signum), 128 + self.signum)


@dataclass
class _State:
    installed: bool = False
    #: The signal received and not yet acted on (None: none).
    pending: int | None = None
    #: >0 while the training loop is between two batches' steps (a signal then waits for the boundary).
    deferring: int = 0


_state = _State()


def _handler(signum: int, frame: FrameType | None) -> None:
    if _state.pending is not None or not _state.deferring:
        _state.pending = signum
        raise Interrupted(signum, deferred=False)
    _state.pending = signum
    how = "Ctrl-C" if signum == signal.SIGINT else "the signal"
    print(
        f"advtrain: {_NAMES.get(signal.Signals(signum), signum)} received: stopping after this "
        f"step and saving a checkpoint ({how} again to stop at once)",
        file=sys.stderr,
        flush=True,
    )


@contextmanager
def install(*, world_size: int = 1) -> Iterator[None]:
    """Route SIGINT and SIGTERM through this module while the block runs (main thread, one process).

    Elsewhere (a worker thread, several processes) it does nothing.
    """
    if world_size > 1 or threading.current_thread() is not threading.main_thread():
        yield
        return
    old: dict[int, Any] = {}
    for sig in EXIT_CODES:
        old[sig] = signal.signal(sig, _handler)
    _state.installed, _state.pending, _state.deferring = True, None, 0
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        _state.installed, _state.pending, _state.deferring = False, None, 0


def requested() -> int | None:
    """The signal that asked the run to stop, or None."""
    return _state.pending


@contextmanager
def in_batch_loop() -> Iterator[None]:
    """While this block runs, a first signal waits for the next `checkpoint_now()`."""
    _state.deferring += 1
    try:
        yield
    finally:
        _state.deferring -= 1


def checkpoint_now() -> None:
    """A safe point: raise `Interrupted(deferred=True)` if a signal is waiting for one."""
    if _state.pending is not None:
        raise Interrupted(_state.pending, deferred=True)


class StoppableLoader:
    """A training loader whose batches end at a safe point when a signal is waiting.

    Wraps the run's loader (same length, state and epochs); before it asks for an epoch's next
    batch it calls `checkpoint_now()`, so the loader position saved with the stop is the first
    batch not trained on. After the epoch's last batch it stops deferring: the epoch's end
    (callbacks, validation, checkpoint) is not a step boundary, and a signal there stops at once
    (the first fetch of the next epoch would be one again; its state is the epoch checkpoint).
    """

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:  # state_dict, load_state_dict, set_epoch, ...
        return getattr(self.loader, name)

    def __iter__(self) -> Iterator[Any]:
        it = iter(self.loader)
        total = len(self.loader)
        with in_batch_loop():
            while True:
                # Before each batch but not after the last one: the epoch's end must run first
                # (a stop there would save an epoch whose end-of-epoch work never happened).
                if self.loader.state_dict()["batch_index"] < total:
                    checkpoint_now()
                try:
                    batch = next(it)
                except StopIteration:
                    return
                yield batch
