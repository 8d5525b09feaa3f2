"""customtkinter views: one CTkFrame subclass (or small class) per concern, callbacks injected.

They lay out widgets and draw what the controllers in `ui.controllers`
compute; they hold no configuration of their own. A part that runs
something in the background owns it and its `after` loop: `LivePreview`
the preview worker and the image counts, `RunTab` the training process,
`LrFindWindow` the LR range test; `ui.app.App` only wires them together.
"""
