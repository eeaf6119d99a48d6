"""The upstream HTTP/1.1 client (connections, keep-alive pools) the gateway streams from."""
