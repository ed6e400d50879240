"""Training, evaluation, checkpoints, export and inference speed."""
