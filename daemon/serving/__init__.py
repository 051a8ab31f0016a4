"""Serving: the event hub, the transports (Unix socket, WebSocket), JSON-RPC dispatch, the
daemon's state and its life as a background process."""
