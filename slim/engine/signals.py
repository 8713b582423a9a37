"""Stopping a run on request: SIGTERM, SIGUSR1 and a first Ctrl-C are recorded, the trainer stops between
steps after saving a resumable checkpoint (trainer.py's docstring), a second Ctrl-C interrupts at once.
"""
import os
import signal
import threading

STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")


class StopRequested(KeyboardInterrupt):
    """The run stopped because a signal asked it to, after saving a resumable checkpoint.

    `exit_code` is 128 + the signal's number (SIGTERM: 143, SIGINT: 130), the status a shell reports for a
    process ended by that signal; str() is the logged line saying where the run stopped and how to go on."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.signum = int(signum)
        self.exit_code = 128 + self.signum


class StopSignals:
    """Once installed, SIGTERM, SIGUSR1 and a first SIGINT only record a request to stop (`signum`); the
    trainer looks at it between steps. A SIGINT after a request interrupts at once (KeyboardInterrupt), as
    Python does by default. Installed only from the main thread, never over a signal that is ignored
    (SIG_IGN, e.g. SIGINT of a background job); restore() puts the previous handlers back.

    Data-loading worker processes forked after install() inherit the handlers and ignore SIGINT and SIGUSR1
    (a Ctrl-C reaches the whole process group): the main process finishes its step and they end with it.
    They ignore SIGTERM too (data.py sets it in each worker, over Paddle's own handler), so a SIGTERM sent to
    the whole group stops the run the same way."""

    def __init__(self):
        self.signum = 0  # the first signal received; 0: none
        self.forced = False  # a second SIGINT interrupted at once
        self._previous = {}
        self._pid = None

    def __enter__(self):
        return self.install()

    def __exit__(self, *exc):
        self.restore()
        return False

    def install(self):
        if self._previous or threading.current_thread() is not threading.main_thread():
            return self
        self._pid = os.getpid()
        for name in STOP_SIGNALS:
            sig = getattr(signal, name, None)
            if sig is None:
                continue
            previous = signal.getsignal(sig)
            if previous is signal.SIG_IGN or previous is None:  # ignored on purpose, or set outside Python
                continue
            signal.signal(sig, self._handle)
            self._previous[sig] = previous
        return self

    def restore(self):
        previous, self._previous = self._previous, {}
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        # Only record: no I/O here (the step, or a checkpoint being written, goes on undisturbed).
        if os.getpid() != self._pid:
            return  # a forked data-loading worker: the main process decides
        if self.signum and signum == signal.SIGINT:
            self.forced = True
            raise KeyboardInterrupt
        if not self.signum:
            self.signum = signum
