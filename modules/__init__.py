"""The engine: configuration, step plan, schedules and training.

Nothing in this package imports `ui/`, tkinter or matplotlib (a test walks
the imports). Importing `modules` itself does not import torch: the preview
path stays light.
"""
