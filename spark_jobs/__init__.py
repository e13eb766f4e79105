"""Rescore's Spark side: one entry module per job, each a ``main(argv)`` over pure transforms.

Everything here ships to the cluster as a zip with ``--py-files``.
"""
