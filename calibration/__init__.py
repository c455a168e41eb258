"""Images in, arrays out, and the target-neutral part of INT8: what every target's quantization reads.

Data: labelled image sources, opening untrusted image files, the preprocessing record, calibration and
evaluation sampling, class-name files. Quantization, the same for every target: activation ranges (amax rules),
the Q/DQ ONNX rewrite and its simulation, agreement with FP32, per-layer sensitivity and per-tensor channel spread.

Everything here needs only numpy, Pillow and, for the quantization modules, onnx and an ONNX executor the
caller passes in: no torch, so the on-device path can use it.
"""
