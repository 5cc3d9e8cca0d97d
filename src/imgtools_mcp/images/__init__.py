"""Image inputs and outputs: reference resolution, masks and thumbnails."""
