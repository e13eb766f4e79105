"""Benchmark harness: Rescore's scoring job beside the ceiling and the other ways people score
images on Spark, on the same images, weights, cores and batch size. ``make bench`` runs it."""
