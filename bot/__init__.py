"""A self-hosted Discord bot that upscales images 4x with 1min.ai's IMAGE_UPSCALER."""

__version__ = "0.1.0"
