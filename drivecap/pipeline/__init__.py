"""The real-time pipeline, in the order a frame travels: sources -> capture thread -> inference (pixel pre-gate,
encoder, semantic gate, decoder) -> the offline or threaded loop that feeds the outputs (``runner.Pipeline``).

It knows the encoder and decoder only through small protocols and writes through :mod:`drivecap.outputs`.
"""
