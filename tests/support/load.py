"""Load helpers run as their own processes, so the test's event loop and GIL never distort what they measure."""

# Sends one raw HTTP request (stdin) and reads the response as fast as it can for argv[2] seconds; prints the bytes.
FIREHOSE_READER = r"""
import socket, sys, time
port, payload = int(sys.argv[1]), sys.stdin.buffer.read()
s = socket.create_connection(("127.0.0.1", port))
s.sendall(payload)
total, end = 0, time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    data = s.recv(1 << 20)
    if not data:
        break
    total += len(data)
print(total, flush=True)
"""
