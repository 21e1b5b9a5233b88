"""Training the caption decoder (torch, CPU; extra ``train``): feature cache, data set, model, loop, export.

Nothing in the runtime imports this package.
"""
