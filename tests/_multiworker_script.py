"""Run by tests/test_distribute.py as one of two workers: MultiWorkerMirroredStrategy via TF_CONFIG.

Keras 3's ``fit`` under MultiWorkerMirroredStrategy fails in its own metric
reduction, with any input (tensorflow/tensorflow#72388; seen here with tf.data
too), so this worker trains a Keras model with a custom loop: ``strategy.run``
on the loader's batches, gradients all-reduced across the workers.
"""

import json

import numpy as np
import tensorflow as tf

strategy = tf.distribute.MultiWorkerMirroredStrategy()

import keras  # noqa: E402

import gpuloader  # noqa: E402

n, batch_size = 400, 25
rng = np.random.default_rng(0)  # every worker builds the same full dataset, and keeps its own shard
x = np.concatenate([rng.normal(size=(n, 8)), np.arange(n)[:, None]], axis=1).astype(np.float32)
y = (x[:, :4].sum(axis=1) > 0).astype(np.float32)[:, None]
loader = gpuloader.Loader(x, y, batch_size=batch_size, seed=11, verbose=False)  # shards from TF_CONFIG

with strategy.scope():
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1, activation="sigmoid")])
    optimizer = keras.optimizers.SGD(0.5)
    model.build((None, 8))
    optimizer.build(model.trainable_variables)


@tf.function
def train_step(features, labels):
    def replica_step(features, labels):
        with tf.GradientTape() as tape:
            predictions = model(features[:, :-1], training=True)
            losses = keras.losses.binary_crossentropy(labels, predictions)
            loss = tf.reduce_sum(losses) / (batch_size * strategy.num_replicas_in_sync)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    return strategy.reduce("SUM", strategy.run(replica_step, args=(features, labels)), axis=None)


seen, losses = [], []
for _ in range(3):
    ids, total = [], 0.0
    for features, labels in loader.get_tf_dataset():
        ids.extend(int(v) for v in features.numpy()[:, -1])
        total += float(train_step(features, labels))
    loader.on_epoch_end()
    seen.append(ids)
    losses.append(total / len(loader))

print(json.dumps({
    "num_shards": loader.num_shards, "shard_index": loader.shard_index, "steps": len(loader),
    "plan": str(loader.plan), "seen": seen, "loss": losses, "epoch": loader.epoch,
}))
