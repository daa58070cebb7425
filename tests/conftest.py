"""pytest configuration shared by all tests.

Splits the CPU into 2 logical devices at import time, before any TensorFlow op, so that tests
can run MirroredStrategy(["CPU:0", "CPU:1"]) without GPUs (as Keras' own tests do). Tests on
the default strategy are unaffected: their ops still run on CPU:0.
"""

import tensorflow as tf

NUM_LOGICAL_CPUS = 2

try:
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration()] * NUM_LOGICAL_CPUS,
    )
except RuntimeError:  # TensorFlow already initialised (e.g. another conftest ran an op)
    pass
