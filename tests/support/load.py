"""Load helpers run as their own processes, so the test's event loop and GIL never distort what they measure."""

import json
import subprocess
import sys

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

HEALTHZ_PROBER = r"""
import http.client, json, sys, time
port, count, every = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
out = []
for _ in range(count):
    started = time.monotonic()
    conn.request("GET", "/healthz")
    response = conn.getresponse()
    response.read()
    assert response.status == 200
    out.append(time.monotonic() - started)
    time.sleep(max(0.0, every - (time.monotonic() - started)))
print(json.dumps(out), flush=True)
"""


def probe_healthz_in_own_process(port: int, count: int, every: float) -> list[float]:
    """Probe from a separate process, so the test's own event loop (busy with 50 streams) and GIL cannot delay the
    measurement: what is measured is the gateway."""
    done = subprocess.run([sys.executable, "-c", HEALTHZ_PROBER, str(port), str(count), str(every)],
                          capture_output=True, text=True, timeout=60, check=True)
    return [float(x) for x in json.loads(done.stdout)]
