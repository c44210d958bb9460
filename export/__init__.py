"""Export trained generators to ONNX and TensorRT engines (needs the [train] extra; engines need [trt])."""
