"""customtkinter views: one CTkFrame subclass per tab or panel, callbacks injected.

They lay out widgets and draw what the controllers in `ui.controllers`
compute; they hold no configuration of their own.
"""
