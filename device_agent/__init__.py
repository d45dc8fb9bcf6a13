"""dflare-edge device agent: serves a TFLite model over gRPC on the device where it is deployed.

Imports nothing from ``host``; needs only numpy, grpcio, protobuf and a TFLite runtime.
"""

__version__ = "0.1.0"
