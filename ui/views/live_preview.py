"""The draft's preview kept current without blocking the Tk main loop.

`LivePreview` owns the three `after` loops of the settings: the debounce
(`schedule()` recomputes DEBOUNCE_MS after the last edit, so typing
"0.0003" computes once, not six times), the poll of the `PreviewWorker`
thread (a 20-million-step plan never freezes the window; a result that
arrives after a newer edit is dropped by the worker), and the poll of the
image and caption counters (they count off the Tk thread; when their count
arrives the preview is computed again). Every state that reaches the screen
goes to the injected `on_state(state)`.
"""

from collections.abc import Callable

from ui.controllers.preset_draft import PresetDraft, PreviewState
from ui.controllers.preview_worker import PreviewWorker

DEBOUNCE_MS = 150
PREVIEW_POLL_MS = 20
COUNT_POLL_MS = 100


class LivePreview:
    def __init__(self, widget, draft: PresetDraft, on_state: Callable[[PreviewState], None]):
        """`widget` runs the `after` callbacks (the app window)."""
        self._widget = widget
        self._draft = draft
        self._on_state = on_state
        self.worker = PreviewWorker(draft)
        self._refresh_job = None
        self._preview_job = None
        self._count_job = None
        self.redraws = 0  # how many times the preview was recomputed (tests check the debounce)

    def schedule(self) -> None:
        """Recompute the preview DEBOUNCE_MS after the last edit."""
        if self._refresh_job is not None:
            self._widget.after_cancel(self._refresh_job)
        self._refresh_job = self._widget.after(DEBOUNCE_MS, self.refresh)

    def refresh(self) -> None:
        """Ask the worker thread for the draft's preview; `_poll_preview` hands it on when it arrives."""
        self._refresh_job = None
        self.redraws += 1
        self.worker.request()
        if self._preview_job is None:
            self._preview_job = self._widget.after(PREVIEW_POLL_MS, self._poll_preview)

    def _poll_preview(self) -> None:
        self._preview_job = None
        state = self.worker.collect()
        if state is not None:
            self._on_state(state)
            if (state.counting or state.counting_captions) and self._count_job is None:
                self._count_job = self._widget.after(COUNT_POLL_MS, self._poll_count)
        if self.worker.busy or self.worker.has_result:
            self._preview_job = self._widget.after(PREVIEW_POLL_MS, self._poll_preview)

    def _poll_count(self) -> None:
        self._count_job = None
        counter, caption_counter = self._draft.counter, self._draft.caption_counter
        arrived = counter.collect()
        arrived = caption_counter.collect() or arrived
        if arrived:
            self.refresh()
        elif counter.busy or caption_counter.busy:
            self._count_job = self._widget.after(COUNT_POLL_MS, self._poll_count)
        else:
            self.refresh()

    def cancel(self) -> None:
        """Stop the loops (the window closes)."""
        for job in (self._refresh_job, self._preview_job, self._count_job):
            if job is not None:
                self._widget.after_cancel(job)
        self._refresh_job = self._preview_job = self._count_job = None
