"""Evaluation networks built from a genotype (reference: quark0/darts model.py)."""

import keras
from keras import layers, ops

from tf_amended_darts import genotypes, operations
from tf_amended_darts.search_model import build_by_zeros, preprocess
from tf_amended_darts.search_space import SearchSpace

_PACKAGE = "tf_amended_darts"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DropPath(operations.Composite):
    """Drops a whole path per example with probability `rate`, scaling survivors by 1/(1-rate)."""

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, rate, training=False):
        if not training:
            return x
        # Under a mixed policy the mask comes from float32 noise: in bfloat16, keep + noise
        # is rounded to 2^-7 near 1 and the drop probability with it.
        dtype = "float32" if x.dtype in operations.HALF_DTYPES else x.dtype
        keep = 1.0 - ops.cast(rate, dtype)
        noise = keras.random.uniform(
            (ops.shape(x)[0], 1, 1, 1), dtype=dtype, seed=self.seed_generator
        )
        return x / ops.cast(keep, x.dtype) * ops.cast(ops.floor(keep + noise), x.dtype)

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Cell(operations.Composite):
    """A cell of a derived architecture; drop-path on every edge that is not an identity."""

    def __init__(self, cell_genotype, channels, reduction, reduction_prev, **kwargs):
        super().__init__(**kwargs)
        if isinstance(cell_genotype, dict):
            cell_genotype = genotypes.CellGenotype(cell_genotype["nodes"], cell_genotype["concat"])
        self.cell_genotype = cell_genotype
        self.channels = channels
        self.reduction = reduction
        self.reduction_prev = reduction_prev
        dtype = self.dtype_policy
        self.preprocess0, self.preprocess1 = preprocess(
            channels, reduction_prev, affine=True, dtype=dtype
        )
        self.node_ops = [
            [
                operations.make_operation(
                    op, channels, 2 if reduction and j < 2 else 1, affine=True, dtype=dtype
                )
                for op, j in node
            ]
            for node in cell_genotype.nodes
        ]
        self.drop_path = DropPath(dtype=dtype)

    def call(self, s0, s1, drop_rate, training=False):
        states = [self.preprocess0(s0, training=training), self.preprocess1(s1, training=training)]
        for node, node_ops in zip(self.cell_genotype.nodes, self.node_ops):
            outs = []
            for (_, j), op in zip(node, node_ops):
                h = op(states[j], training=training)
                if not isinstance(op, operations.Identity):
                    h = self.drop_path(h, drop_rate, training=training)
                outs.append(h)
            states.append(sum(outs))
        return ops.concatenate([states[c] for c in self.cell_genotype.concat], axis=-1)

    def get_config(self):
        return {
            **super().get_config(),
            "cell_genotype": self.cell_genotype.to_dict(),
            "channels": self.channels,
            "reduction": self.reduction,
            "reduction_prev": self.reduction_prev,
        }


@keras.saving.register_keras_serializable(package=_PACKAGE)
class AuxiliaryHead(operations.Composite):
    """ReLU, avg-pool 5x5, conv1x1(128)-BN-ReLU, conv2x2(768)[-BN]-ReLU, linear.

    Pool stride 3 (CIFAR, 8x8 -> 2x2) or 2 (ImageNet, 7x7 -> 2x2). The reference's ImageNet head
    has no BN after the 2x2 conv (a typo kept for consistency with the paper). Global pooling
    before the classifier is a no-op at the reference sizes and lets small inputs work.
    """

    def __init__(self, num_classes, pool_stride=3, bn_after_conv2=True, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.pool_stride = pool_stride
        self.bn_after_conv2 = bn_after_conv2
        dtype = self.dtype_policy
        self.conv1 = layers.Conv2D(128, 1, use_bias=False, dtype=dtype)
        self.bn1 = operations.batch_norm(affine=True, dtype=dtype)
        self.conv2 = layers.Conv2D(768, 2, use_bias=False, dtype=dtype)
        self.bn2 = operations.batch_norm(affine=True, dtype=dtype) if bn_after_conv2 else None
        self.global_pooling = layers.GlobalAveragePooling2D(dtype=dtype)
        self.classifier = layers.Dense(num_classes, dtype=dtype)

    def call(self, x, training=False):
        x = ops.relu(x)
        size = x.shape[1]
        if size is not None and size >= 5:
            x = ops.average_pool(x, 5, strides=self.pool_stride, padding="valid")
        x = ops.relu(self.bn1(self.conv1(x), training=training))
        if x.shape[1] is not None and x.shape[1] < 2:
            x = ops.pad(x, [[0, 0], [0, 1], [0, 1], [0, 0]])
        x = self.conv2(x)
        if self.bn2 is not None:
            x = self.bn2(x, training=training)
        return self.classifier(self.global_pooling(ops.relu(x)))

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "pool_stride": self.pool_stride,
            "bn_after_conv2": self.bn_after_conv2,
        }


class _Network(keras.Model):
    """Shared body of the CIFAR and ImageNet networks: cells, auxiliary head, classifier.

    `call(x, training, return_aux)` returns logits, or (logits, aux_logits) with return_aux.
    The drop-path probability is the non-trainable variable `drop_path_rate` (the training
    loop raises it linearly), so changing it neither retraces nor rebuilds anything.
    """

    def __init__(self, genotype, channels, cells, num_classes, auxiliary, reduction_prev, **kwargs):
        super().__init__(**kwargs)
        if isinstance(genotype, (str, dict)):
            genotype = (
                genotypes.Genotype.from_dict(genotype)
                if isinstance(genotype, dict)
                else genotypes.load_genotype(genotype)
            )
        self.genotype = genotype
        self.channels = channels
        # `self.cells` holds the Cell layers (their checkpoint path), hence num_cells.
        self.num_cells = cells
        self.num_classes = num_classes
        self.auxiliary = auxiliary
        layout = SearchSpace(
            cells=cells,
            per_stage=genotype.per_stage,
            nodes=max(c.num_nodes for c in genotype.cells()),
        )
        self.cells = []
        for i in range(cells):
            reduction, slot = layout.cell_slot(i)
            channels *= 2 if reduction else 1
            self.cells.append(
                Cell(
                    genotype.cell(reduction, slot),
                    channels,
                    reduction,
                    reduction_prev,
                    name=f"cell_{i}",
                    dtype=self.dtype_policy,
                )
            )
            reduction_prev = reduction
        self.aux_position = 2 * cells // 3
        self.auxiliary_head = (
            AuxiliaryHead(num_classes, *self._aux_args, dtype=self.dtype_policy)
            if auxiliary
            else None
        )
        self.global_pooling = layers.GlobalAveragePooling2D(dtype=self.dtype_policy)
        self.classifier = layers.Dense(num_classes, dtype=self.dtype_policy)
        self.drop_path_rate = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="drop_path_rate"
        )

    def stem(self, x, training):
        raise NotImplementedError

    def build(self, input_shape):
        build_by_zeros(self, input_shape, return_aux=self.auxiliary)

    def call(self, x, training=False, return_aux=False):
        if return_aux and not self.auxiliary:
            raise ValueError("return_aux=True needs a network built with auxiliary=True")
        s0, s1 = self.stem(x, training)
        aux_logits = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_rate, training=training)
            if i == self.aux_position and return_aux:
                aux_logits = ops.cast(self.auxiliary_head(s1, training=training), self.dtype)
        # Logits in the variable dtype: under a mixed policy the loss is float32.
        logits = ops.cast(self.classifier(self.global_pooling(s1)), self.dtype)
        return (logits, aux_logits) if return_aux else logits

    def get_config(self):
        return {
            **super().get_config(),
            "genotype": self.genotype.to_dict(),
            "channels": self.channels,
            "cells": self.num_cells,
            "num_classes": self.num_classes,
            "auxiliary": self.auxiliary,
        }


@keras.saving.register_keras_serializable(package=_PACKAGE)
class NetworkCIFAR(_Network):
    """3x3 conv stem with 3C channels, `cells` cells, auxiliary head at 2/3 depth."""

    _aux_args = (3, True)

    def __init__(self, genotype, channels=36, cells=20, num_classes=10, auxiliary=False, **kwargs):
        super().__init__(
            genotype, channels, cells, num_classes, auxiliary, reduction_prev=False, **kwargs
        )
        self.stem_layers = operations.conv_bn(3 * channels, 1, dtype=self.dtype_policy)

    def stem(self, x, training):
        x = operations.apply_layers(self.stem_layers, x, training)
        return x, x


@keras.saving.register_keras_serializable(package=_PACKAGE)
class NetworkImageNet(_Network):
    """Two stride-2 stems (224 -> 56 -> 28), `cells` cells, auxiliary head at 2/3 depth."""

    _aux_args = (2, False)

    def __init__(
        self, genotype, channels=48, cells=14, num_classes=1000, auxiliary=False, **kwargs
    ):
        super().__init__(
            genotype, channels, cells, num_classes, auxiliary, reduction_prev=True, **kwargs
        )
        c, dtype = channels, self.dtype_policy
        self.stem0 = (
            operations.conv_bn(c // 2, 2, dtype)
            + [layers.ReLU(dtype=dtype)]
            + operations.conv_bn(c, 2, dtype)
        )
        self.stem1 = [layers.ReLU(dtype=dtype)] + operations.conv_bn(c, 2, dtype)

    def stem(self, x, training):
        s0 = operations.apply_layers(self.stem0, x, training)
        return s0, operations.apply_layers(self.stem1, s0, training)


NETWORKS = {"cifar": NetworkCIFAR, "imagenet": NetworkImageNet}
