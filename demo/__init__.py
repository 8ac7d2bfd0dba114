"""``tilepipe demo``: the whole pipeline on one machine, ending in a live map in the browser."""
