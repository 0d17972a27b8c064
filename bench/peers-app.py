"""The python fixture app of bench/peers: a small HTTP server on $PORT.

It answers every GET with 200 "ok".  PEERS_APP_IGNORE_TERM=1 makes it
ignore SIGTERM (only SIGKILL ends it), for the stop row with an app that
does not stop.  Standard library only, so /usr/bin/python3 runs it.
"""
import http.server
import os
import signal
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        pass


def main():
    port = int(os.environ.get("PORT", "0"))
    if not 0 < port < 65536:
        sys.exit("peers-app: PORT is required (1..65535)")
    if os.environ.get("PEERS_APP_IGNORE_TERM") == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    http.server.ThreadingHTTPServer.allow_reuse_address = True
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print("peers-app: listening on %d" % port, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
