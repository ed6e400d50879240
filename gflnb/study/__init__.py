"""Experiments: the sweep and where its points run, their records, the paper's design and the statistics."""
