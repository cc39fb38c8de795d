"""The selfie models' graphs, rewritten in memory as the engine runs them.

Two rewrites of MediaPipe's files, from the same weights:

- **A narrower input**, for crops of a standing person. A crop around a
  standing person is taller than it is wide, and the square model sees it
  widened to 1:1: a third of the model's time goes on background beside
  them. The model is fully convolutional but for two kinds of constant: its
  squeeze-and-excitation blocks average a feature map with a pool as large
  as that map, and its decoder resizes to fixed sizes (and XNNPACK will not
  reshape it). Rewritten for a 160x256 input, it sees the person of a 5:8
  crop at the same scale in two thirds of the time. On DAVIS the engine
  scored as before with it (``python -m bench.quality``, 2026-11-30: README,
  "Narrower crops"); a smaller square input did not.
- **The last upsampling in XNNPACK.** The models end in MediaPipe's custom
  ``Convolution2DTransposeBias`` (a 2x2 kernel, stride 2, 16 channels to 1),
  which XNNPACK does not take: LiteRT runs it, and the sigmoid after it, on
  its own, a third of the model's time (1.0 of 3.1 ms for the square model,
  0.5 of 1.7 for the landscape one). With a stride equal to its kernel, no
  two of its outputs share an input pixel: it is a 1x1 convolution to the
  four phases of each 2x2 block, then a depth-to-space, both XNNPACK's. The
  outputs are bit-identical (``tests/test_model_shapes.py``).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

#: the model's smallest feature map is its input over this, so a side must divide by it
STRIDE = 16
UPSAMPLE = b"Convolution2DTransposeBias"


@functools.lru_cache(maxsize=8)
def prepared(path: Path, width: int, height: int) -> bytes:
    """The ``.tflite`` model at ``path`` taking ``width`` x ``height`` pictures (a
    scale of its own input by whole feature-map cells), its last upsampling made
    XNNPACK operations.

    Raises ValueError for a model with another structure than MediaPipe's selfie
    models (a pool that is not global, sizes that do not scale evenly, another
    upsampling)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    if width % STRIDE or height % STRIDE:
        raise ValueError(f"a selfie model input must be a multiple of {STRIDE}, "
                         f"got {width}x{height}")
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(path.read_bytes(), 0))
    _reshape(model, path.name, width, height)
    _upsample_in_xnnpack(model, path.name)
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _builtin(code: Any) -> int:
    """An operator code's builtin operator (codes under 127 are also kept in the
    schema's older, deprecated field; a model may fill either)."""
    return max(code.builtinCode, code.deprecatedBuiltinCode)


def _reshape(model: Any, name: str, width: int, height: int) -> None:
    """Scale every feature map, global pool and resize to the new input, in place."""
    from ai_edge_litert import schema_py_generated as schema

    graph = model.subgraphs[0]
    source = graph.tensors[graph.inputs[0]]
    fy, fx = height / int(source.shape[1]), width / int(source.shape[2])

    def scaled(n: int, f: float, what: str) -> int:
        if n * f != round(n * f):
            raise ValueError(f"{name}: {what} of {n} does not scale to {width}x{height}")
        return round(n * f)

    names = {code: kind for kind, code in vars(schema.BuiltinOperator).items()
             if not kind.startswith("_")}
    weights = set()
    for op in graph.operators:
        kind = names.get(_builtin(model.operatorCodes[op.opcodeIndex]))
        if kind == "DEQUANTIZE":  # float16 weights made float32: shapes that stay
            weights.update(op.outputs)
        elif kind == "AVERAGE_POOL_2D":
            options, shape = op.builtinOptions, graph.tensors[op.inputs[0]].shape
            if (options.filterHeight, options.filterWidth) != (shape[1], shape[2]):
                raise ValueError(f"{name}: a pool that is not global")
            options.filterHeight = scaled(options.filterHeight, fy, "a pool")
            options.filterWidth = scaled(options.filterWidth, fx, "a pool")
        elif kind == "RESIZE_BILINEAR":
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


def _upsample_in_xnnpack(model: Any, name: str) -> None:
    """Replace the transposed convolution (2x2 kernel, stride 2: ``[1, 2, 2, C]``
    weights, one output channel) by CONV_2D to 4 channels and DEPTH_TO_SPACE 2,
    in place. Output channel dy * 2 + dx of the 1x1 convolution is the pixel
    (2y + dy, 2x + dx) of the upsampled map, which is how DEPTH_TO_SPACE lays
    the channels out; the weights are those of that kernel tap."""
    from ai_edge_litert import schema_py_generated as schema

    graph = model.subgraphs[0]
    made_by = {out: op for op in graph.operators for out in op.outputs}

    def values(index: int) -> np.ndarray:
        """A constant's float32 values, through the DEQUANTIZE of its float16 weights."""
        tensor = graph.tensors[index]
        if index in made_by:
            tensor = graph.tensors[made_by[index].inputs[0]]
        kind = np.float16 if tensor.type == schema.TensorType.FLOAT16 else np.float32
        data = np.frombuffer(bytes(model.buffers[tensor.buffer].data), kind)
        return data.astype(np.float32).reshape([int(n) for n in tensor.shape])

    def constant(shape: list[int], data: np.ndarray | None, label: str) -> int:
        """A new float32 tensor (a feature map when ``data`` is None), by index."""
        buffer = schema.BufferT()
        if data is not None:
            buffer.data = np.frombuffer(np.float32(data).tobytes(), np.uint8)
        model.buffers.append(buffer)
        tensor = schema.TensorT()
        tensor.shape, tensor.type = np.int32(shape), schema.TensorType.FLOAT32
        tensor.name, tensor.buffer = label.encode(), len(model.buffers) - 1
        graph.tensors.append(tensor)
        return len(graph.tensors) - 1

    def opcode(builtin: int) -> int:
        for i, code in enumerate(model.operatorCodes):
            if not code.customCode and _builtin(code) == builtin:
                return i
        code = schema.OperatorCodeT()  # (the deprecated field holds 127 for larger codes)
        code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), 1
        model.operatorCodes.append(code)
        return len(model.operatorCodes) - 1

    operators, unused = [], set()
    for op in graph.operators:
        if model.operatorCodes[op.opcodeIndex].customCode != UPSAMPLE:
            operators.append(op)
            continue
        source, kernel_index, bias_index = (int(i) for i in op.inputs)
        kernel, bias = values(kernel_index), values(bias_index)
        # options: padding, stride w, stride h (int32); SAME with stride 2 doubles the map
        stride = tuple(np.frombuffer(bytes(op.customOptions), np.int32)[1:3])
        if kernel.shape[:3] != (1, 2, 2) or stride != (2, 2) or bias.shape != (1,):
            raise ValueError(f"{name}: an upsampling other than 2x2, stride 2, to one channel")
        channels = kernel.shape[3]
        n, h, w, _ = (int(s) for s in graph.tensors[source].shape)
        phases = constant([n, h, w, 4], None, "upsample/phases")
        conv = schema.OperatorT()
        conv.opcodeIndex = opcode(schema.BuiltinOperator.CONV_2D)
        conv.inputs = np.int32([source,
                                constant([4, 1, 1, channels], kernel.reshape(4, 1, 1, channels),
                                         "upsample/weights"),
                                constant([4], np.repeat(bias, 4), "upsample/bias")])
        conv.outputs = np.int32([phases])
        conv.builtinOptionsType = schema.BuiltinOptions.Conv2DOptions
        conv.builtinOptions = schema.Conv2DOptionsT()
        conv.builtinOptions.padding = schema.Padding.VALID
        conv.builtinOptions.strideW = conv.builtinOptions.strideH = 1
        conv.builtinOptions.dilationWFactor = conv.builtinOptions.dilationHFactor = 1
        to_space = schema.OperatorT()
        to_space.opcodeIndex = opcode(schema.BuiltinOperator.DEPTH_TO_SPACE)
        to_space.inputs, to_space.outputs = np.int32([phases]), op.outputs
        to_space.builtinOptionsType = schema.BuiltinOptions.DepthToSpaceOptions
        to_space.builtinOptions = schema.DepthToSpaceOptionsT()
        to_space.builtinOptions.blockSize = 2
        operators += [conv, to_space]
        unused.update((kernel_index, bias_index))
    # the DEQUANTIZE ops that fed the old kernel and bias now feed nothing
    graph.operators = [op for op in operators if not unused.intersection(op.outputs)]
