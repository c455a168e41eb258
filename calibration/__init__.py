"""Images in, arrays out: data sources, the preprocessing record, and calibration sampling.

Everything here needs only numpy and Pillow, so the on-device path can use it without torch.
"""
