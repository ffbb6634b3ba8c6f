"""The deployed path: score images with a bundle on numpy, Pillow and onnxruntime only (no torch)."""
