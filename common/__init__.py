"""srcluster's shared package: the pure core, and the cluster's Redis side in ``cluster/``.

The rule, in one paragraph: everything in ``common/`` outside ``common/cluster/``
is the *pure core*. It decides what an upscaled image looks like and nothing
else: it does no network I/O and imports neither Redis, Flask nor Celery
(ruff's banned-api rule refuses them here). ``common/cluster/`` is the only
code that talks to Redis, through one store, and it too stays free of Flask and
Celery. The HTTP API (``api/``) and the Celery worker (``worker/``) are thin
shells around these two, so the same code path runs on a laptop, in a test and
on a worker host.

The pure core, one module per noun:

- ``settings``, ``errors``, ``params``: configuration, the error tree, request parameters.
- ``imageio`` (decode/encode), ``metadata`` (EXIF orientation, PNG chunks, byte-level) and
  ``frames`` (animations and page stacks, refused).
- ``tiling``: tile geometry and stitching that reproduce whole-image inference.
- ``models`` (the registry) and ``ncnn`` (the ncnn-to-ONNX converter).
- ``engines/``: the inference backends behind one ``Engine`` contract.
- ``pipeline``: the local ``plan -> infer -> stitch`` pipeline, the cluster's reference.
- ``estimate``: a job's estimated inference time, and its ETA while it runs.
"""
