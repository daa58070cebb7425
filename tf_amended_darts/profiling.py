"""Trainable parameter counts and mult-adds of one forward pass."""

import numpy as np
import tensorflow as tf


def count_params(variables):
    return int(sum(np.prod(v.shape) for v in variables))


def trainable_params(model, include_auxiliary=True):
    """Trainable weights, architecture variables excluded; the auxiliary head optionally."""
    arch = {id(v) for v in getattr(model, "arch_variables", [])}
    aux = getattr(model, "auxiliary_head", None)
    excluded = arch | (
        {id(v) for v in aux.trainable_variables}
        if aux is not None and not include_auxiliary
        else set()
    )
    return count_params([v for v in model.trainable_variables if id(v) not in excluded])


# Multiply-accumulates per output element, from the op's kernel shape.
def _kernel_macs(op):
    if op.type not in ("Conv2D", "DepthwiseConv2dNative", "MatMul", "BatchMatMulV2"):
        return 0
    kernel = op.inputs[1].shape
    if op.type == "Conv2D":  # [kh, kw, cin, cout] -> kh * kw * cin per output
        return kernel[0] * kernel[1] * kernel[2]
    if op.type == "DepthwiseConv2dNative":  # [kh, kw, cin, mult] -> kh * kw per output
        return kernel[0] * kernel[1]
    if op.type in ("MatMul", "BatchMatMulV2"):
        a = op.inputs[0].shape
        transpose = op.get_attr("transpose_a") if op.type == "MatMul" else op.get_attr("adj_x")
        return a[-2] if transpose else a[-1]
    return 0


def mult_adds(model, input_shape):
    """Mult-adds of one inference forward pass of one example (convolutions and dense layers,
    read off the traced TF graph; BN, activations and pooling are not counted, as is usual)."""
    fn = tf.function(lambda x: model(x, training=False))
    graph = fn.get_concrete_function(tf.TensorSpec((1,) + tuple(input_shape), model.dtype)).graph
    total = 0
    for op in graph.get_operations():
        per_output = _kernel_macs(op)
        if per_output:
            total += per_output * int(np.prod(op.outputs[0].shape))
    return int(total)
