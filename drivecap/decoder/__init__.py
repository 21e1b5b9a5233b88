"""Caption decoding at run time: a model bundle + the numpy LSTM decoder turn a conv5 map into a caption.

This package never imports torch; training lives in :mod:`drivecap.training`.
"""
