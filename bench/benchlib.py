"""What the benchmark scripts share: run as `python3 bench/NAME.py`, they import it from here."""

import socket


def free_port():
    """A loopback TCP port nothing listens on right now, for a server the script starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
