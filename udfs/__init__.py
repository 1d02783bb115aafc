"""Code that runs inside the Flink job's operators: decoding, per-user state, the model and batched scoring."""
