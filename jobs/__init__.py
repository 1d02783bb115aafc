"""IntentFlow jobs: the Flink job, its tools and the reference clients."""
