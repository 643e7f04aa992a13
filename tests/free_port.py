"""A TCP port nobody listens on, for the rendezvous of the tests' 2-process launches."""

import socket


def free_port() -> str:
    # Port 0 lets the OS pick one that is free now; a port derived from the pid (as before) collided when two
    # xdist workers' launches or a previous launch's TIME_WAIT held it, and the launch failed with no message.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])
