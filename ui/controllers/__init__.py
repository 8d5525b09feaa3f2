"""Pure-Python controllers of the desktop app: no tkinter, no matplotlib.

Each holds the state a tab edits or shows and computes what the view
displays, so it is tested without a display. The views in `ui.views` only
lay out widgets, forward edits here and draw what comes back.
"""
