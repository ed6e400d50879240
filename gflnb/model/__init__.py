"""The GFL detector and its components: backbone, neck, head, and the quality and box representations."""
