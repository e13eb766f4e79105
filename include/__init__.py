"""What both sides read: Spark conf profiles, example models and the publishing tool,
the sample-data generator and the benchmark harness."""
