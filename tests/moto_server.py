"""Runs moto's server (all AWS services, STS included) for tokenbridge's tests.

Binds 127.0.0.1 on a port the OS picks, prints that port as one line on stdout,
then serves until standard input reaches EOF: the parent holds the pipe open for
as long as it wants moto, so moto also ends when the parent dies.
"""

import logging
import os
import sys

from moto.moto_server.threaded_moto_server import ThreadedMotoServer


def main() -> None:
    # One log line per request on stderr would drown the test output.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()  # returns once the socket is bound and listening
    _, port = server.get_host_and_port()
    print(port, flush=True)
    # The parent reads only that line: send anything moto prints later
    # (it print()s some warnings) to stderr rather than to a pipe no one reads.
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdin.buffer.read()  # blocks until EOF
    os._exit(0)  # the server thread is a daemon; skip its orderly shutdown


if __name__ == "__main__":
    main()
