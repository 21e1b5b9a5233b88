"""drivecap: real-time driver-assist captioning (VGG16 encoder, scene gate, LSTM decoder, overlay, speech)."""

__version__ = "0.1.0"
