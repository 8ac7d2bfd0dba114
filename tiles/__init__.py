"""``tilepipe tiles``: serve the render store's tiles with a cache contract that fits live maps."""
