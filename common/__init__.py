"""srcluster's pure core.

Everything that decides what an upscaled image looks like lives here: settings,
errors, image decoding and encoding, tile planning and stitching, the model
registry with its ncnn-to-ONNX converter, the inference engine and the local
``plan -> infer -> stitch`` pipeline that the cluster must reproduce exactly.

The boundary: this package does no network I/O and imports neither Flask nor
Celery (ruff's banned-api rule enforces it). The HTTP API and the Celery
worker are thin shells around these functions, so the same code path runs on
a laptop, in a test and on a worker host.
"""
