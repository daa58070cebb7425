"""Candidate operations of the DARTS search spaces, as Keras layers, and their registry.

Semantics follow the DARTS reference (quark0/darts, operations.py): ReLU-conv-BN order, separable
convolutions applied twice, factorized reduce for skip_connect at stride 2, a zero operation that
honours the stride, and BatchNorm without affine parameters inside the supernet (`affine=False`).
"""

import random

import keras
import tensorflow as tf
from keras import layers, ops

from tf_amended_darts import distribute, errors

_PACKAGE = "tf_amended_darts"


# Mixed precision (search and train, `mixed_precision=`): Keras' mixed_<dtype> policy on every
# device, computing in float16 (GPUs: tensor cores) or bfloat16 (CPUs; float32's exponent
# range). Variables, alphas, their softmax, logits, losses and BatchNorm statistics stay
# float32. float16 gradients underflow and overflow: its steps scale every loss they
# differentiate (loop.LossScale, through the estimators' nested tapes too).
HALF_DTYPES = ("float16", "bfloat16")


def mixed_precision_dtype(value):
    """The compute dtype a config's `mixed_precision` names: None (off) or one of HALF_DTYPES.
    False is off; True is bfloat16, as runs recorded it before float16 (2026-11-30)."""
    if value is None or value is False:
        return None
    if value is True:
        return "bfloat16"
    if value not in HALF_DTYPES:
        raise errors.InputError(
            f"mixed_precision must be one of {', '.join(HALF_DTYPES)} (or None: off), got {value!r}"
        )
    return value


def config_mixed_precision(value):
    """mixed_precision_dtype of a SearchConfig's or TrainConfig's field, which names the dtype:
    a boolean is refused there."""
    if isinstance(value, bool):
        raise errors.InputError(
            f"mixed_precision must be float16, bfloat16 or None (off), got {value}"
        )
    return mixed_precision_dtype(value)


def recorded_mixed_precision(config_dict):
    """A config's dict as run.json records it: bfloat16 as true, as runs recorded it before
    float16 existed, so that they still resume (run.json's config is compared as written)."""
    if config_dict.get("mixed_precision") == "bfloat16":
        return {**config_dict, "mixed_precision": True}
    return config_dict


def dtype_policy(mixed_precision):
    """The dtype policy of a network (None: Keras' global default, float32 unless set)."""
    dtype = mixed_precision_dtype(mixed_precision)
    return f"mixed_{dtype}" if dtype else None


def batch_norm(affine, name=None, dtype=None):
    """BatchNorm as the reference uses it (PyTorch eps 1e-5, momentum 0.1)."""
    return BatchNorm(
        momentum=0.9, epsilon=1e-5, center=affine, scale=affine, name=name, dtype=dtype
    )


# Dtypes of TensorFlow's fused batch-norm kernel (no float64).
_FUSED_DTYPES = ("float16", "bfloat16", "float32")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BatchNorm(layers.BatchNormalization):
    """Keras BatchNormalization (synchronized: global-batch statistics under MirroredStrategy)
    whose training pass on one replica is `normalize_batch`: TF's fused kernel forward, first
    and second derivatives in closed form.

    The supernet has hundreds of these layers and the architecture gradients differentiate
    through them twice. Keras' path is about 45 small operations per layer and as many again
    per derivative; the fused kernel is one, but TF differentiates its gradient by rebuilding
    it from ~40 elementwise operations and differentiating those (~80 more), per layer and per
    second-order product: half of the amended step's graph. Several replicas and masks take
    Keras' path (on several replicas with the global batch's moments from one lean all-reduce
    per layer, `_moments`).

    Moving statistics take finite updates only (elementwise): an exploding or poisoned batch
    would otherwise leave inf/NaN statistics behind even when its step is refused (the loss
    can stay finite while the variance overflows), and they would reach the next checkpoint.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("synchronized", True)
        super().__init__(**kwargs)

    def call(self, inputs, training=None, mask=None):
        if not training or not self.trainable:
            return super().call(inputs, training=training, mask=mask)
        if (
            mask is not None
            or self.axis not in (-1, len(inputs.shape) - 1)
            or len(inputs.shape) != 4
            or distribute.replicas_in_context() > 1
        ):
            before = [tf.identity(v.value) for v in (self.moving_mean, self.moving_variance)]
            outputs = super().call(inputs, training=training, mask=mask)
            for variable, old in zip((self.moving_mean, self.moving_variance), before):
                variable.assign(_finite_or(variable.value, old))
            return outputs
        outputs, mean, variance = normalize_batch(inputs, self.epsilon)
        if self.scale:
            outputs = outputs * tf.cast(self.gamma, outputs.dtype)
        if self.center:
            outputs = outputs + tf.cast(self.beta, outputs.dtype)
        self.update_moving_statistics(mean, variance)
        return tf.cast(outputs, self.compute_dtype)

    def update_moving_statistics(self, mean, variance):
        """Moves the moving statistics toward a batch's mean and variance (finite updates)."""
        momentum = self.momentum
        for variable, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
            old = tf.cast(variable.value, batch.dtype)
            variable.assign(
                tf.cast(_finite_or(old * momentum + batch * (1.0 - momentum), old), variable.dtype)
            )

    def _moments(self, inputs, mask):
        # Several replicas: the global batch's moments from one all-reduce per layer of
        # the same sums Keras all-reduces in three (same formula, same results), through
        # distribute.all_reduce_sum, whose gradient does not walk the graph.
        if mask is not None or not self.synchronized or distribute.replicas_in_context() == 1:
            return super()._moments(inputs, mask)
        axes = self._reduction_axes
        count = tf.cast(tf.size(inputs) // tf.shape(inputs)[self.axis], inputs.dtype)
        total, squares, count = distribute.all_reduce_sum(
            [tf.reduce_sum(inputs, axes), tf.reduce_sum(tf.square(inputs), axes), count]
        )
        mean = tf.math.divide_no_nan(total, count)
        return mean, tf.maximum(tf.math.divide_no_nan(squares, count) - tf.square(mean), 0.0)


def normalize_batch(x, epsilon):
    """(x - mean) / sqrt(var + epsilon) over N, H, W per channel of an NHWC batch (biased
    variance, as Keras), with the batch mean and variance (not differentiable: for the moving
    statistics).

    Forward and first derivative: TF's fused kernel and its gradient kernel (float64, which
    they lack, from the formulas). Second derivatives: in closed form. With
    s = 1/sqrt(var + eps), x^ the output, means over N, H, W:
      dL/dx = J(g) = s (g - mean(g) - x^ mean(g x^))      (g = dL/dx^; J is symmetric)
    and for the second derivatives of <u, J(g)> (u: the upstream of dL/dx)
      d/dg = J(u),  d/dx = -s^2 x^ (mean(u g) - mean(u) mean(g) - c d) - s (d J(g) + c J(u))
    with c = mean(g x^), d = mean(u x^). A handful of operations per derivative where TF
    rebuilds the fused gradient from ~40 operations and differentiates those. Third
    derivatives are refused (an error, not a silently wrong number).
    """
    statistics = []

    @tf.custom_gradient
    def normalize(x):
        forward = _fused_forward if x.dtype.name in _FUSED_DTYPES else _formula_forward
        y, mean, variance, s, first_derivative = forward(x, epsilon)
        statistics.extend([mean, variance])

        def first(dy):
            return backward(dy, x)

        @tf.custom_gradient
        def backward(dy, x):  # x: only what the second derivatives are taken against
            g = tf.cast(dy, s.dtype)
            dx = tf.cast(first_derivative(dy), s.dtype)

            def second(u):
                # x^ in float32 only here: a float32 copy made in the forward would be kept
                # alive for every layer under a half-precision policy.
                ju, ddx = _second_derivatives(tf.cast(u, s.dtype), g, dx, tf.cast(y, s.dtype), s)
                return _no_third_derivative(tf.cast(ju, dy.dtype), tf.cast(ddx, x.dtype))

            return tf.cast(dx, x.dtype), second

        return y, first

    y = normalize(x)
    return y, tf.stop_gradient(statistics[0]), tf.stop_gradient(statistics[1])


_BATCH_AXES = [0, 1, 2]  # N, H, W of NHWC


def _jacobian(v, xhat, s):
    """J(v) = s (v - mean(v) - x^ mean(v x^)): the normalisation's (symmetric) Jacobian."""
    return s * (v - tf.reduce_mean(v, _BATCH_AXES) - xhat * tf.reduce_mean(v * xhat, _BATCH_AXES))


def _fused_forward(x, epsilon):
    """normalize_batch's forward by TF's fused kernel: (y, mean, biased variance, s, the first
    derivative: the kernel's own gradient, one operation)."""
    channels = x.shape[-1] if x.shape[-1] is not None else tf.shape(x)[-1]
    count = x.shape[:-1].num_elements()  # static where the batch size is known
    if count is None:
        count = tf.cast(tf.size(x) // channels, "float32")
    one = tf.ones([channels], "float32")
    y, mean, variance, *reserved = tf.raw_ops.FusedBatchNormV3(
        x=x,
        scale=one,
        offset=tf.zeros_like(one),
        mean=tf.zeros([0]),
        variance=tf.zeros([0]),
        epsilon=epsilon,
        is_training=True,
    )
    # The kernel's batch variance is Bessel-corrected.
    variance = variance * ((count - 1.0) / count)
    s = tf.math.rsqrt(variance + epsilon)

    def first_derivative(g):
        return tf.raw_ops.FusedBatchNormGradV3(
            y_backprop=g,
            x=x,
            scale=one,
            reserve_space_1=reserved[0],
            reserve_space_2=reserved[1],
            reserve_space_3=reserved[2],
            epsilon=epsilon,
            is_training=True,
        )[0]

    return y, mean, variance, s, first_derivative


def _formula_forward(x, epsilon):
    """normalize_batch's forward from the formulas (dtypes the fused kernel lacks)."""
    mean = tf.reduce_mean(x, _BATCH_AXES)
    variance = tf.reduce_mean(tf.square(x - mean), _BATCH_AXES)
    s = tf.math.rsqrt(variance + epsilon)
    y = (x - mean) * s
    return y, mean, variance, s, lambda g: _jacobian(g, y, s)


def _second_derivatives(u, g, dx, xhat, s):
    """The derivatives of <u, J(g)> against g and x (normalize_batch's docstring); dx = J(g)."""
    axes = _BATCH_AXES
    ju = _jacobian(u, xhat, s)
    c, d = tf.reduce_mean(g * xhat, axes), tf.reduce_mean(u * xhat, axes)
    a = tf.reduce_mean(u * g, axes) - tf.reduce_mean(u, axes) * tf.reduce_mean(g, axes)
    ddx = -(s * s * xhat) * (a - c * d) - s * (d * dx + c * ju)
    return ju, ddx


@tf.custom_gradient
def _no_third_derivative(*tensors):
    def refuse(*_):
        raise NotImplementedError("BatchNorm (normalize_batch) has no third derivatives")

    return tensors, refuse


def _finite_or(new, old):
    return tf.where(tf.math.is_finite(new), new, tf.cast(old, new.dtype))


def pad_symmetric(x, kernel_size, dilation=1, constant_values=0.0):
    """Pads H and W by dilation * (k - 1) / 2 on both sides, the reference's padding.

    A VALID window of any stride over the result is centred on the input pixels 0, s, 2s, ...
    as PyTorch's. TF's padding="SAME" agrees at stride 1 (odd kernels), but at stride 2 on even
    sizes it puts the extra row and column after the input only, shifting every window by one
    pixel: strided windows must be padded explicitly.
    """
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    ph, pw = dh * (kh - 1) // 2, dw * (kw - 1) // 2
    return ops.pad(x, [[0, 0], [ph, ph], [pw, pw], [0, 0]], constant_values=constant_values)


def window_padding(stride):
    """Keras `padding` of a conv that `apply_conv` runs: its own at stride 1, explicit after."""
    return "same" if stride == 1 else "valid"


def apply_conv(conv, x):
    """Runs a Conv2D/DepthwiseConv2D made with `window_padding`, with the reference's windows."""
    if conv.padding == "valid":
        x = pad_symmetric(x, conv.kernel_size, conv.dilation_rate)
    return conv(x)


def conv_bn(channels, stride, dtype=None):
    """The stems' 3x3 conv (no bias) and affine BN."""
    return [
        layers.Conv2D(
            channels, 3, strides=stride, padding=window_padding(stride), use_bias=False, dtype=dtype
        ),
        batch_norm(affine=True, dtype=dtype),
    ]


def apply_layers(stack, x, training):
    """Runs a list of layers, passing `training` to those that take it (BatchNorm) and giving
    convolutions the reference's windows."""
    for layer in stack:
        if isinstance(layer, layers.BatchNormalization):
            x = layer(x, training=training)
        elif isinstance(layer, layers.Conv2D):
            x = apply_conv(layer, x)
        else:
            x = layer(x)
    return x


class Composite(layers.Layer):
    """A layer made of Keras layers that build themselves on their first (eager) call.

    Keras would otherwise build it by tracing `call` symbolically first, which costs seconds
    per network; the networks' `build` runs one eager forward pass instead. Sublayers are made
    with `dtype=self.dtype_policy` (Keras does not pass a layer's dtype down by itself).
    """

    def build(self, input_shape):
        pass


class _Operation(Composite):
    """Base class: every operation is built from (channels, stride, affine)."""

    def __init__(self, channels, stride=1, affine=True, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.stride = stride
        self.affine = affine

    def get_config(self):
        return {
            **super().get_config(),
            "channels": self.channels,
            "stride": self.stride,
            "affine": self.affine,
        }


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ReLUConvBN(_Operation):
    """ReLU -> Conv(k x k, or the (1 x k, k x 1) pair when factorized) -> BN."""

    def __init__(self, channels, kernel_size=1, stride=1, affine=True, factorized=False, **kwargs):
        super().__init__(channels, stride, affine, **kwargs)
        self.kernel_size = kernel_size
        self.factorized = factorized
        if factorized:
            k = kernel_size
            padding = window_padding(stride)
            self.convs = [
                layers.Conv2D(
                    channels,
                    (1, k),
                    strides=(1, stride),
                    padding=padding,
                    use_bias=False,
                    dtype=self.dtype_policy,
                ),
                layers.Conv2D(
                    channels,
                    (k, 1),
                    strides=(stride, 1),
                    padding=padding,
                    use_bias=False,
                    dtype=self.dtype_policy,
                ),
            ]
        else:
            self.convs = [
                layers.Conv2D(
                    channels,
                    kernel_size,
                    strides=stride,
                    padding=window_padding(stride),
                    use_bias=False,
                    dtype=self.dtype_policy,
                )
            ]
        self.bn = batch_norm(affine, dtype=self.dtype_policy)

    def call(self, x, training=False):
        x = ops.relu(x)
        for conv in self.convs:
            x = apply_conv(conv, x)
        return self.bn(x, training=training)

    def get_config(self):
        return {
            **super().get_config(),
            "kernel_size": self.kernel_size,
            "factorized": self.factorized,
        }


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DilConv(_Operation):
    """ReLU -> depthwise k x k (dilation d) -> pointwise 1 x 1 -> BN.

    TF has no strided dilated convolution. With the reference's symmetric padding, a stride-2
    dilation-2 depthwise conv only reads even pixels, so it equals an undilated conv on
    x[::2, ::2] (stride 1, whose 'same' padding is symmetric): exactly the reference's output,
    at a quarter of the cost.
    """

    def __init__(self, channels, kernel_size=3, stride=1, dilation=1, affine=True, **kwargs):
        super().__init__(channels, stride, affine, **kwargs)
        if stride not in (1, 2) or (stride == 2 and dilation not in (1, 2)):
            raise ValueError(
                f"DilConv supports stride 1, or stride 2 with dilation 1 or 2; "
                f"got stride {stride}, dilation {dilation}"
            )
        self.kernel_size = kernel_size
        self.dilation = dilation
        subsample = stride == 2 and dilation == 2
        self.subsample = subsample
        conv_stride = 1 if subsample else stride
        self.depthwise = layers.DepthwiseConv2D(
            kernel_size,
            strides=conv_stride,
            dilation_rate=1 if subsample else dilation,
            padding=window_padding(conv_stride),
            use_bias=False,
            dtype=self.dtype_policy,
        )
        self.pointwise = layers.Conv2D(channels, 1, use_bias=False, dtype=self.dtype_policy)
        self.bn = batch_norm(affine, dtype=self.dtype_policy)

    def call(self, x, training=False):
        x = ops.relu(x)
        if self.subsample:
            x = x[:, ::2, ::2, :]
        x = self.pointwise(apply_conv(self.depthwise, x))
        return self.bn(x, training=training)

    def get_config(self):
        return {**super().get_config(), "kernel_size": self.kernel_size, "dilation": self.dilation}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SepConv(_Operation):
    """Two DilConv(dilation 1) blocks: the first carries the stride (reference SepConv)."""

    def __init__(self, channels, kernel_size=3, stride=1, affine=True, **kwargs):
        super().__init__(channels, stride, affine, **kwargs)
        self.kernel_size = kernel_size
        self.first = DilConv(channels, kernel_size, stride, 1, affine, dtype=self.dtype_policy)
        self.second = DilConv(channels, kernel_size, 1, 1, affine, dtype=self.dtype_policy)

    def call(self, x, training=False):
        return self.second(self.first(x, training=training), training=training)

    def get_config(self):
        return {**super().get_config(), "kernel_size": self.kernel_size}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FactorizedReduce(_Operation):
    """ReLU -> two stride-2 1x1 convs on offset grids, concatenated -> BN (halves H and W)."""

    def __init__(self, channels, stride=2, affine=True, **kwargs):
        super().__init__(channels, stride, affine, **kwargs)
        if channels % 2:
            raise ValueError(f"FactorizedReduce needs an even channel count, got {channels}")
        self.conv_1 = layers.Conv2D(
            channels // 2, 1, strides=2, use_bias=False, dtype=self.dtype_policy
        )
        self.conv_2 = layers.Conv2D(
            channels // 2, 1, strides=2, use_bias=False, dtype=self.dtype_policy
        )
        self.bn = batch_norm(affine, dtype=self.dtype_policy)

    def call(self, x, training=False):
        x = ops.relu(x)
        # The offset grid starts at pixel (1, 1); pad the far edge so odd sizes line up.
        shifted = ops.pad(x[:, 1:, 1:, :], [[0, 0], [0, 1], [0, 1], [0, 0]])
        x = ops.concatenate([self.conv_1(x), self.conv_2(shifted)], axis=-1)
        return self.bn(x, training=training)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Identity(_Operation):
    def call(self, x, training=False):
        return x


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Zero(_Operation):
    """The 'none' operation: zeros at the output resolution."""

    def call(self, x, training=False):
        if self.stride > 1:
            x = x[:, :: self.stride, :: self.stride, :]
        return ops.zeros_like(x)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Noise(_Operation):
    """The 'noise' operation of RobustDARTS' space S4 (Zela et al., 2020): standard normal
    noise of the (strided) input's shape, independent of the input's values, so no gradient
    reaches the input and it has no weights.

    The noise is a function of a per-layer state [key, draw]: the key is drawn once at build
    (from Python's seeded RNG, as Keras' own seed generators), the draw advances by one per
    training pass. The estimators' passes of one step are stateless calls from the same state
    (estimators.StatelessLosses), so they all see the same noise, as finite differences and
    Hessian-vector products need; the weight step advances it once, and a checkpoint keeps
    it, so a resumed run draws what the uninterrupted one would. Replicas draw the same noise.
    Inference (training=False) draws from the current state without advancing it.
    """

    def build(self, input_shape):
        key = random.randint(1, 2**31 - 1)
        self.state = self.add_weight(
            shape=(2,),
            dtype="int64",
            name="noise_state",
            initializer=lambda shape, dtype=None: ops.convert_to_tensor([key, 0], "int64"),
            trainable=False,
            aggregation="only_first_replica",
        )

    def call(self, x, training=False):
        if self.stride > 1:
            x = x[:, :: self.stride, :: self.stride, :]
        state = self.state.value
        if training:
            self.state.assign(state + ops.convert_to_tensor([0, 1], "int64"))
        noise = tf.random.stateless_normal(tf.shape(x), seed=state, dtype="float32")
        return ops.cast(noise, x.dtype)


def max_pool_3x3(x, stride):
    """3x3 max-pool, padding 1 with -inf on every side (the reference's alignment).

    Explicit padding + VALID, not padding="SAME": TF 2.21 computes second derivatives through
    a SAME max-pool wrongly inside tf.function (tests/operations_test.py shows the case), and
    the architecture gradients differentiate through it twice.
    """
    padded = pad_symmetric(x, 3, constant_values=float("-inf"))
    return ops.max_pool(padded, 3, strides=stride, padding="valid")


def avg_pool_3x3(x, stride):
    """3x3 average over the window's pixels inside the input (the reference's padding 1 with
    count_include_pad=False), windows as `max_pool_3x3`'s.

    Both pools average over all 9 window positions; their ratio is sum / (pixels inside).
    """
    total = ops.average_pool(pad_symmetric(x, 3), 3, strides=stride, padding="valid")
    inside = ops.average_pool(
        pad_symmetric(ops.ones_like(x[:1, :, :, :1]), 3), 3, strides=stride, padding="valid"
    )
    return total / inside


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Pooling(_Operation):
    """3x3 max or average pooling (the average excludes padding, as the reference's
    count_include_pad=False). In the supernet (affine=False) a BN follows, as in the reference."""

    def __init__(self, channels, stride=1, affine=True, mode="max", with_bn=False, **kwargs):
        super().__init__(channels, stride, affine, **kwargs)
        self.mode = mode
        self.with_bn = with_bn
        self.pool = avg_pool_3x3 if mode == "avg" else max_pool_3x3
        self.bn = batch_norm(False, dtype=self.dtype_policy) if with_bn else None

    def call(self, x, training=False):
        x = self.pool(x, self.stride)
        return self.bn(x, training=training) if self.bn is not None else x

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "with_bn": self.with_bn}


def _skip_connect(c, stride, affine, **kw):
    return (
        Identity(c, stride, affine, **kw)
        if stride == 1
        else FactorizedReduce(c, stride, affine, **kw)
    )


def _pool(mode):
    # The reference follows pooling by a non-affine BN in the supernet only.
    return lambda c, stride, affine, **kw: Pooling(
        c, stride, affine, mode=mode, with_bn=not affine, **kw
    )


# name -> factory(channels, stride, affine[, dtype=]) -> layer. Extend with `register_operation`.
OPS = {
    "none": lambda c, stride, affine, **kw: Zero(c, stride, affine, **kw),
    "max_pool_3x3": _pool("max"),
    "avg_pool_3x3": _pool("avg"),
    "skip_connect": _skip_connect,
    "sep_conv_3x3": lambda c, stride, affine, **kw: SepConv(c, 3, stride, affine, **kw),
    "sep_conv_5x5": lambda c, stride, affine, **kw: SepConv(c, 5, stride, affine, **kw),
    "sep_conv_7x7": lambda c, stride, affine, **kw: SepConv(c, 7, stride, affine, **kw),
    "dil_conv_3x3": lambda c, stride, affine, **kw: DilConv(c, 3, stride, 2, affine, **kw),
    "dil_conv_5x5": lambda c, stride, affine, **kw: DilConv(c, 5, stride, 2, affine, **kw),
    "conv_7x1_1x7": lambda c, stride, affine, **kw: ReLUConvBN(
        c, 7, stride, affine, factorized=True, **kw
    ),
    "conv_1x1": lambda c, stride, affine, **kw: ReLUConvBN(c, 1, stride, affine, **kw),
    "conv_3x3": lambda c, stride, affine, **kw: ReLUConvBN(c, 3, stride, affine, **kw),
    "noise": lambda c, stride, affine, **kw: Noise(c, stride, affine, **kw),
}

# Operations without weights: the ones a collapsed DARTS cell fills up with.
PARAMETER_FREE_OPS = {"none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "noise"}
POOL_OPS = ("max_pool_3x3", "avg_pool_3x3")

DARTS_OPS = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)


def register_operation(name, factory, parameter_free=False):
    """Adds an operation usable in search spaces and genotypes.

    `factory(channels, stride, affine)` must return a Keras layer mapping [B, H, W, channels] to
    [B, H/stride, W/stride, channels]. Layers must be serializable for `.keras` round trips.
    To be usable in networks of another dtype than the global default (e.g. float64), the
    factory must also take `dtype=` (a Keras dtype policy) and give it to its layer(s).
    Registration is process-wide (it extends the vocabulary, like keras' own registry).
    """
    if name in OPS:
        raise ValueError(f"operation {name!r} is already registered")
    OPS[name] = factory
    if parameter_free:
        PARAMETER_FREE_OPS.add(name)


def check_operation(name):
    if name not in OPS:
        raise ValueError(f"unknown operation {name!r}; known: {', '.join(sorted(OPS))}")


def make_operation(name, channels, stride, affine, dtype=None):
    """`dtype` (a dtype or policy) reaches the factory only when it is not the global default,
    so factories without a `dtype` argument keep working in default-dtype networks."""
    check_operation(name)
    if dtype is None or keras.dtype_policies.get(dtype).name == keras.config.dtype_policy().name:
        return OPS[name](channels, stride, affine)
    return OPS[name](channels, stride, affine, dtype=dtype)
