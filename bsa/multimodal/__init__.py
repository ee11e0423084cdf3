"""Image + text items in the USB-SafeBench style (arXiv 2505.23793): fields, images, metrics."""
