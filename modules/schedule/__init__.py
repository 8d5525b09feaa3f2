"""The schedule: the step plan (the one place steps are counted), the schedule shapes, the LR curve, the preview.

Pure NumPy and the standard library: nothing here imports torch.
"""
