"""Computing the draft's preview off the GUI thread, keeping only the newest edit's result.

A 20-million-step plan takes a second or two to validate, plan and curve;
on the Tk thread that second freezes the window. `PreviewWorker.request()`
snapshots the draft (`PresetDraft.snapshot`) and computes it on one worker
thread (`PresetDraft.compute`); the view polls `collect()` from a Tk
`after` callback. While a computation runs, further requests replace each
other: only the newest snapshot is computed next. A result whose revision
is no longer the draft's (the user edited meanwhile) is dropped, never
shown, so the screen never goes back to an older edit.
"""

import threading

from ui.controllers.preset_draft import PresetDraft, PreviewState


class PreviewWorker:
    def __init__(self, draft: PresetDraft):
        self.draft = draft
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pending: tuple[dict, int] | None = None  # the newest snapshot not yet being computed
        self._result: PreviewState | None = None
        self._idle = threading.Event()
        self._idle.set()
        self.dropped = 0  # results that arrived after a newer edit (tests check them)

    def request(self) -> None:
        """Compute the draft as it is now (call from the GUI thread after an edit)."""
        snapshot = self.draft.snapshot()
        with self._lock:
            self._pending = snapshot
            if self._thread is None:
                self._idle.clear()
                self._thread = threading.Thread(target=self._work, name="preview", daemon=True)
                self._thread.start()

    def _work(self) -> None:
        while True:
            with self._lock:
                job, self._pending = self._pending, None
                if job is None:
                    self._thread = None
                    self._idle.set()
                    return
            raw, revision = job
            try:
                state = self.draft.compute(raw, revision)
            except Exception as error:  # noqa: BLE001 - a bug must reach the window, not kill the thread
                state = PreviewState(None, False, f"the preview failed: {type(error).__name__}: {error}",
                                     revision=revision)
            with self._lock:
                self._result = state

    def collect(self) -> PreviewState | None:
        """The newest result if it is the preview of the draft as it is now, else None."""
        with self._lock:
            state, self._result = self._result, None
        if state is None:
            return None
        if state.revision != self.draft.revision:
            self.dropped += 1
            return None
        return self.draft.accept(state)

    @property
    def has_result(self) -> bool:
        with self._lock:
            return self._result is not None

    @property
    def busy(self) -> bool:
        return not self._idle.is_set()

    def wait(self, timeout_seconds: float = 60.0) -> bool:
        """Block until nothing is being computed (tests and scripts); True if idle."""
        return self._idle.wait(timeout_seconds)
