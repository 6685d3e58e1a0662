#!/usr/bin/env python3
"""A stand-in for palisade-agent used by the harness's own tests.

Accepts the agent's flags, answers GET /ready with the REVISION it last read
from --source-dir (after a configurable delay), and prints one JSON line per
start describing what it sees (its interfaces, pin dir, pod files).
"""
import argparse, json, os, socket, sys, threading, time
from http.server import BaseHTTPRequestHandler, HTTPServer

ap = argparse.ArgumentParser()
ap.add_argument("--node-name", required=True)
ap.add_argument("--source-dir", required=True)
ap.add_argument("--ready-addr", required=True)
ap.add_argument("--pin-dir", required=True)
ap.add_argument("--uplink", action="append", default=[])
args = ap.parse_args()

state = {"revision": None, "generation": 0}

def poll():
    while True:
        try:
            with open(os.path.join(args.source_dir, "REVISION")) as f:
                rev = f.read().strip()
            if rev != state["revision"]:
                time.sleep(0.1)  # pretend to program maps
                state["revision"] = rev
                state["generation"] += 1
                print(json.dumps({"event": "programmed", "node": args.node_name, "revision": rev}), flush=True)
        except FileNotFoundError:
            pass
        time.sleep(0.05)

class H(BaseHTTPRequestHandler):
    def do_GET(self):
        ready = state["revision"] is not None
        body = json.dumps({"ready": ready, "generation": state["generation"], "revision": state["revision"]}).encode()
        self.send_response(200 if ready else 503)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        sys.stderr.write("http: " + (a[0] % a[1:]) + "\n")

host, port = args.ready_addr.rsplit(":", 1)
srv = HTTPServer((host, int(port)), H)
ifaces = sorted(n for _, n in socket.if_nameindex())
print(json.dumps({"event": "start", "node": args.node_name, "ifaces": ifaces, "pin_dir": args.pin_dir,
                  "files": sorted(os.listdir(args.source_dir))}), flush=True)
sys.stderr.write("fake agent %s starting\n" % args.node_name)
threading.Thread(target=poll, daemon=True).start()
srv.serve_forever()
