#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The README's twenty-line server (demos/tiny) starts and echoes."""
import re
import socket
import subprocess
import sys


def main():
    exe = sys.argv[1]
    print("1..1")
    proc = subprocess.Popen([exe, "tcp://127.0.0.1:0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        line = proc.stdout.readline().decode()
        m = re.fullmatch(r"listening on tcp://127\.0\.0\.1:(\d+)\n", line)
        if not m:
            print("not ok 1 - tiny echo\n# listening line: %r" % line)
            return 1
        with socket.create_connection(("127.0.0.1", int(m.group(1))),
                                      timeout=10) as s:
            payload = bytes(range(256)) * 64
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            got = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
        if got != payload:
            print("not ok 1 - tiny echo\n# got %d bytes" % len(got))
            return 1
        print("ok 1 - tiny echo")
        return 0
    finally:
        proc.kill()
        proc.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
