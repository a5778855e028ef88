"""The model worker: ONNX Runtime sessions fed micro-batches from the Redis streams."""
