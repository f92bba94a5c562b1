"""The measurement engine: pure functions from arrays (and a model's activations) to numbers.

embed (per-superclass Grams, pooled features), ward, cluster (the per-superclass
protocol), metrics (AMI, purity, ARI), score (your own embeddings), whole, rnn_ward
and neighbors (whole-dataset clustering), probe (linear and k-NN probes), stability (ARI
between clusterings). Nothing here imports the tracker, mlflow or optuna, or knows
a file layout of the store; errors are ValueError/TypeError naming the bad value.
This file imports nothing, so ``clusterprobe score`` loads only what it uses.
"""
