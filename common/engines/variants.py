"""Precision variants of a model's ONNX file, made once and cached beside it.

:func:`fp16_path` gives the float16 variant of an fp32 ONNX model: weights and
activations in float16, the input and output kept float32
(``onnxconverter-common``'s ``keep_io_types``), so the engine contract does
not change. It is what the CUDA path runs at precision fp16, and it also runs
on ONNX Runtime's CPU provider, which is how its numerics are tested without a
GPU (compact model 75-93 dB against fp32; x4plus ~79 dB).

The variant is named ``<stem>.fp16.onnx`` beside ``<stem>.onnx``. Since the
fp32 name carries a digest of the weights (see :mod:`common.models`), a new
model gets a new variant. It is written to a temporary name and moved into
place, so processes converting at once never see a partial file.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import onnx

from common.errors import ModelError

FP16_SUFFIX = ".fp16.onnx"


def fp16_path(fp32_path: Path) -> Path:
    """The fp16 variant of ``fp32_path``, converting it on first use.

    Raises:
        ModelError: the fp32 file cannot be read or converted, or the variant
            cannot be written (nothing is left behind on failure).
    """
    target = fp32_path.with_name(fp32_path.stem + FP16_SUFFIX)
    if target.is_file():
        return target
    # imported here: the converter pulls in more of onnx than serving needs
    from onnxconverter_common import float16

    try:
        model = onnx.load(str(fp32_path))
        with warnings.catch_warnings():
            # it warns for every weight below fp16's range that it flushes; expected
            warnings.simplefilter("ignore", UserWarning)
            half = float16.convert_float_to_float16(model, keep_io_types=True)
        _float32_outputs(half)
    except Exception as exc:  # onnx and the converter raise assorted types
        raise ModelError(f"cannot make the fp16 variant of {fp32_path}: {exc}") from None
    _write_atomic(target, half.SerializeToString())
    return target


def _float32_outputs(model: onnx.ModelProto) -> None:
    """Make every graph output float32 again, in place.

    ``keep_io_types`` misses an output produced by an op the converter keeps in
    fp32 (``Resize``, last in the compact x3 model): it casts that to fp16 and
    declares the output fp16. A final Cast to float32 restores the contract.
    """
    graph = model.graph
    for output in graph.output:
        tensor_type = output.type.tensor_type
        if tensor_type.elem_type == onnx.TensorProto.FLOAT:
            continue
        inner = f"{output.name}_fp16"
        for node in graph.node:
            node.output[:] = [inner if name == output.name else name for name in node.output]
            node.input[:] = [inner if name == output.name else name for name in node.input]
        graph.node.append(
            onnx.helper.make_node(
                "Cast", [inner], [output.name], to=onnx.TensorProto.FLOAT, name=f"{inner}_to_fp32"
            )
        )
        tensor_type.elem_type = onnx.TensorProto.FLOAT


def _write_atomic(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` via a temporary file in the same folder.

    Raises:
        ModelError: the folder is not writable or the disk is full.
    """
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise ModelError(f"cannot write {target}: {exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)
    except OSError as exc:
        raise ModelError(f"cannot write {target}: {exc}") from None
    finally:
        Path(tmp).unlink(missing_ok=True)
