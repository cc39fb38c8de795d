"""The square selfie model at a narrower input, for crops of a standing person.

A crop around a standing person is taller than it is wide, and the square
model sees it widened to 1:1: a third of the model's 3.1 ms goes on
background beside them. The model is fully convolutional but for two kinds of
constant: its squeeze-and-excitation blocks average a feature map with a pool
as large as that map, and its decoder resizes to fixed sizes (and XNNPACK will
not reshape it). Rewritten for a 160x256 input (``reshaped``), from the same
weights, it sees the person of a 5:8 crop at the same scale in 2.0 ms. On
DAVIS the engine scored as before with it (``python -m bench.quality``,
2026-11-30: README, "Narrower crops"); a smaller square input did not.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

#: the model's smallest feature map is its input over this, so a side must divide by it
STRIDE = 16


@functools.lru_cache(maxsize=8)
def reshaped(path: Path, width: int, height: int) -> bytes:
    """The ``.tflite`` model at ``path`` rewritten to take ``width`` x ``height``
    pictures (a scale of its own input by whole feature-map cells).

    Raises ValueError for a model with another structure than MediaPipe's selfie
    models (a pool that is not global, or sizes that do not scale evenly)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    if width % STRIDE or height % STRIDE:
        raise ValueError(f"a selfie model input must be a multiple of {STRIDE}, "
                         f"got {width}x{height}")
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(path.read_bytes(), 0))
    graph = model.subgraphs[0]
    names = {code: name for name, code in vars(schema.BuiltinOperator).items()
             if not name.startswith("_")}

    def op_name(op: object) -> str | None:
        code = model.operatorCodes[op.opcodeIndex]  # type: ignore[attr-defined]
        return names.get(max(code.builtinCode, code.deprecatedBuiltinCode))

    source = graph.tensors[graph.inputs[0]]
    fy, fx = height / int(source.shape[1]), width / int(source.shape[2])

    def scaled(n: int, f: float, what: str) -> int:
        if n * f != round(n * f):
            raise ValueError(f"{path.name}: {what} of {n} does not scale to {width}x{height}")
        return round(n * f)

    weights = set()
    for op in graph.operators:
        name = op_name(op)
        if name == "DEQUANTIZE":  # float16 weights made float32: shapes that stay
            weights.update(op.outputs)
        elif name == "AVERAGE_POOL_2D":
            options, shape = op.builtinOptions, graph.tensors[op.inputs[0]].shape
            if (options.filterHeight, options.filterWidth) != (shape[1], shape[2]):
                raise ValueError(f"{path.name}: a pool that is not global")
            options.filterHeight = scaled(options.filterHeight, fy, "a pool")
            options.filterWidth = scaled(options.filterWidth, fx, "a pool")
        elif name == "RESIZE_BILINEAR":
            buffer = model.buffers[graph.tensors[op.inputs[1]].buffer]
            h, w = np.frombuffer(bytes(buffer.data), np.int32)
            size = np.int32([scaled(h, fy, "a resize"), scaled(w, fx, "a resize")])
            buffer.data = np.frombuffer(size.tobytes(), np.uint8)
    for index, tensor in enumerate(graph.tensors):  # feature maps: NHWC, scaled alike
        constant = model.buffers[tensor.buffer].data is not None
        if constant or index in weights or tensor.shape is None or len(tensor.shape) != 4:
            continue
        shape = tensor.shape.copy()
        shape[1] = scaled(shape[1], fy, "a feature map") if shape[1] > 1 else 1
        shape[2] = scaled(shape[2], fx, "a feature map") if shape[2] > 1 else 1
        tensor.shape = shape
        if tensor.shapeSignature is not None:
            tensor.shapeSignature = shape.copy()
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
