"""The desktop app and the drawing code it shares with the preview command.

Importing `ui` imports neither tkinter nor customtkinter; `ui.curve_plot`
needs only matplotlib (it draws onto a `Figure`, never pyplot).
"""
