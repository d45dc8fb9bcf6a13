"""The TFLite flatbuffer, read and written: one place for the model file itself.

``metadata`` reads a model's input normalization from its TFLite metadata (``TFLITE_METADATA``,
tflite-support's schema) or a sidecar JSON, with no dependency beyond the runtime; ``export``
converts Keras models to TFLite (the fixtures' recipes, the repaired models, layers kept in float
through QuantizationDebugger) and writes the metadata back, importing TensorFlow only inside its
functions. It imports nothing of ``host`` but ``host.errors``.
"""
