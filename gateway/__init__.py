"""``tilepipe gateway``: the last mile, from Redis pub/sub to browsers over WebSocket and SSE."""
