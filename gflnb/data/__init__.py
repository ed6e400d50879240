"""Data: COCO-format sets, the synthetic set, and the reference's preprocessing."""
