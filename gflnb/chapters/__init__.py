"""The chapters' helpers: the numbers behind their figures, the figures, the explorer, notebook plumbing."""
