"""Measuring drivecap: the latency benchmark (runner + comparisons), the naive loop it is compared with, its
report and plots, the soak run, and the encoder benchmark.
"""
