"""VGG16 image encoders behind one interface: ONNX Runtime (fp32, INT8 QDQ), TensorRT, and their build tools.

``drivecap.encoders.factory.make_encoder(cfg)`` is the one entry point the rest of drivecap uses; the backends
are imported only when asked for.
"""
