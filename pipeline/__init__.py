"""The build chain: load/train -> fold BN -> export ONNX -> quantize -> compile -> validate -> report."""
