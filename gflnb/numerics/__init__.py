"""The same numbers on every machine: portable kernels and math, and what a timing ran on."""
