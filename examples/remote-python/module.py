#!/usr/bin/env python3
"""sms.console: a BatchSender remote module in Python 3, standard library only.

It speaks the remote module protocol of docs/modules.md: BatchSender's
remote.http provider calls

    GET  <url>/info      what this module is and what items it takes
    POST <url>/validate  check a batch template and items before anything is sent
    POST <url>/preview   show what items become, without sending them
    POST <url>/send      carry out a chunk of items, one result per item, in order

Every request is signed with the connection's Standard Webhooks secret; this
module refuses any request whose signature does not verify.

"Sending" here means printing the text message to standard output, so the
example runs anywhere. Items may ask for a failure to see how BatchSender
handles it: {"fail": "retry"}, {"fail": "permanent"} or {"fail": "unknown"}.

Run it:

    BATCHSENDER_SIGNING_SECRET=whsec_... python3 module.py --port 8471

then create a connection in BatchSender (the operator must allow private
networks for a module on loopback: BATCHSENDER_ALLOW_PRIVATE_NETWORKS=true):

    {"provider": "remote.http", "name": "sms-console",
     "config": {"url": "http://127.0.0.1:8471"},
     "secrets": {"signing_secret": "whsec_..."}}

--test-control adds endpoints the Go conformance test uses to switch the
module's behaviour (never enable it in production).
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOLERANCE_SECONDS = 5 * 60
MAX_TEXT = 1600
MAX_BODY = 16 << 20

INFO = {
    "protocol": 1,
    "id": "sms.console",
    "title": "Text messages printed to the console (example remote module)",
    "max_chunk": 250,
    "validate": True,
    "preview": True,
    "item_schema": {
        "type": "object",
        "required": ["to", "text"],
        "properties": {
            "to": {"type": "string", "description": "Recipient phone number"},
            "text": {"type": "string", "maxLength": MAX_TEXT},
            "fail": {"type": "string", "enum": ["retry", "permanent", "unknown"]},
        },
    },
    "template_schema": {
        "type": "object",
        "properties": {"prefix": {"type": "string", "description": "Put before every text"}},
    },
}


def decode_secret(secret):
    """Returns the HMAC key of a Standard Webhooks secret ("whsec_" + base64)."""
    s = secret.strip()
    if s.startswith("whsec_"):
        s = s[len("whsec_"):]
    return base64.b64decode(s + "=" * (-len(s) % 4))


def verify(key, headers, body, now=None):
    """Checks the Standard Webhooks headers; returns an error text or None."""
    msg_id = headers.get("webhook-id")
    ts = headers.get("webhook-timestamp")
    sigs = headers.get("webhook-signature")
    if not msg_id or not ts or not sigs:
        return "missing webhook-id, webhook-timestamp or webhook-signature"
    try:
        ts_int = int(ts)
    except ValueError:
        return "webhook-timestamp is not Unix seconds"
    now = time.time() if now is None else now
    if abs(now - ts_int) > TOLERANCE_SECONDS:
        return "webhook-timestamp outside the tolerance"
    signed = msg_id.encode() + b"." + ts.encode() + b"." + body
    want = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    for entry in sigs.split():
        version, _, sig = entry.partition(",")
        if version == "v1" and hmac.compare_digest(sig, want):
            return None
    return "no matching signature"


def check_template(template):
    if not isinstance(template, dict):
        return "template must be an object"
    prefix = template.get("prefix")
    if prefix is not None and not isinstance(prefix, str):
        return "prefix: must be a string"
    return None


def segments(text):
    """Billable SMS segments of a GSM-7 text (160 characters each)."""
    return max(1, -(-len(text) // 160))


def render(template, data):
    """What an item becomes: the text as the recipient sees it."""
    text = template.get("prefix", "") + data["text"]
    return {"to": data["to"], "text": text, "segments": segments(text)}


def check_item(data):
    if not isinstance(data, dict):
        return "item must be an object"
    to, text = data.get("to"), data.get("text")
    if not isinstance(to, str) or not to:
        return "to: required, a phone number"
    if not isinstance(text, str) or not text:
        return "text: required"
    if len(text) > MAX_TEXT:
        return "text: longer than %d characters" % MAX_TEXT
    if data.get("fail") not in (None, "retry", "permanent", "unknown"):
        return "fail: must be retry, permanent or unknown"
    return None


class Tenant:
    """State of one base path. A real module has one; the test gives each
    conformance scenario its own base path."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sent = {}  # item id -> message id: a retried item is not sent twice
        self.behaviour = {"mode": "accept", "retry_after": 0, "reject_keys": []}
        self.calls = []
        self.wake = threading.Event()


class Module:
    def __init__(self, key, quiet, test_control):
        self.key = key
        self.quiet = quiet
        self.test_control = test_control
        self.lock = threading.Lock()
        self.tenants = {}
        self.next_id = 0

    def tenant(self, prefix):
        with self.lock:
            return self.tenants.setdefault(prefix, Tenant())

    def message_id(self):
        with self.lock:
            self.next_id += 1
            return "sms_%08d" % self.next_id

    def send(self, tenant, template, items):
        prefix = template.get("prefix", "")
        results = []
        for it in items:
            item_id, data = it.get("id"), it.get("data")
            if not isinstance(item_id, str) or not item_id:
                raise ValueError("every item needs its id")
            problem = check_item(data)
            if problem:
                results.append({"outcome": "permanent", "error": problem})
                continue
            if item_id in tenant.behaviour["reject_keys"]:
                results.append({"outcome": "permanent", "error": "recipient refused"})
                continue
            fail = data.get("fail")
            if fail == "retry":
                results.append({"outcome": "retry", "retry_after_seconds": 30, "error": "carrier busy"})
                continue
            if fail in ("permanent", "unknown"):
                results.append({"outcome": fail, "error": "asked to fail: " + fail})
                continue
            with tenant.lock:
                msg_id = tenant.sent.get(item_id)
            if msg_id is None:  # idempotency: the item ID is stable across attempts
                msg_id = self.message_id()
                if not self.quiet:
                    print("SMS to %s: %s%s" % (data["to"], prefix, data["text"]), flush=True)
                with tenant.lock:
                    tenant.sent[item_id] = msg_id
            results.append({"outcome": "ok", "message_id": msg_id, "units": segments(prefix + data["text"])})
        return results


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "sms-console/1"

    def log_message(self, fmt, *args):  # quiet: the printed messages are the output
        pass

    def answer(self, status, obj=None, text=None, headers=None):
        body = json.dumps(obj).encode() if obj is not None else (text or "").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if obj is not None else "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n > MAX_BODY:
            raise ValueError("body too large")
        return self.rfile.read(n) if n else b""

    def route(self):
        prefix, _, last = self.path.split("?", 1)[0].rstrip("/").rpartition("/")
        return prefix, last

    def do_GET(self):
        self.handle_request("GET")

    def do_POST(self):
        self.handle_request("POST")

    def handle_request(self, method):
        module = self.server.module
        try:
            body = self.read_body()
        except ValueError as e:
            self.answer(413, text=str(e))
            return
        prefix, last = self.route()
        if module.test_control and prefix.endswith("/_test"):
            self.control(module.tenant(prefix[: -len("/_test")]), method, last, body)
            return
        problem = verify(module.key, self.headers, body)
        if problem:
            self.answer(401, text="signature: " + problem)
            return
        tenant = module.tenant(prefix)
        if method == "GET" and last == "info":
            self.answer(200, INFO)
            return
        if method != "POST" or last not in ("validate", "preview", "send"):
            self.answer(404, text="not found")
            return
        try:
            req = json.loads(body)
            template, items = req["template"], req["items"]
            if not isinstance(items, list):
                raise ValueError("items must be a list")
        except (ValueError, KeyError, TypeError) as e:
            self.answer(400, text="bad request: %s" % e)
            return
        if last == "validate":
            self.answer(200, {
                "template_error": check_template(template) or "",
                "errors": [check_item(it.get("data") if isinstance(it, dict) else None) for it in items],
            })
            return
        problem = check_template(template)
        if last == "preview":
            results = []
            for it in items:
                data = it.get("data") if isinstance(it, dict) else None
                err = problem or check_item(data)
                results.append({"error": err} if err else {"rendered": render(template, data)})
            self.answer(200, {"results": results})
            return
        if problem:
            self.answer(422, text="template: " + problem)
            return
        with tenant.lock:
            tenant.calls.append({"items": len(items), "keys": [it.get("id", "") for it in items if isinstance(it, dict)]})
            b = dict(tenant.behaviour)
        mode = b["mode"]
        if mode == "rate_limit":
            self.answer(429, text="slow down", headers={"Retry-After": str(b["retry_after"])})
        elif mode == "server_error":
            self.answer(503, text="unavailable")
        elif mode == "reject":
            self.answer(422, text="chunk refused")
        elif mode == "hang":
            tenant.wake.wait(30)  # BatchSender times out first and closes
        else:
            try:
                results = module.send(tenant, template, items)
            except ValueError as e:
                self.answer(400, text="bad request: %s" % e)
                return
            self.answer(200, {"results": results})

    def control(self, tenant, method, last, body):
        if method == "POST" and last == "behaviour":
            b = json.loads(body)
            with tenant.lock:
                tenant.behaviour = {"mode": b.get("mode", "accept"), "retry_after": int(b.get("retry_after", 0)),
                                    "reject_keys": b.get("reject_keys") or []}
            if tenant.behaviour["mode"] != "hang":
                tenant.wake.set()
                tenant.wake = threading.Event()
            self.answer(200, {})
        elif method == "GET" and last == "calls":
            with tenant.lock:
                self.answer(200, {"calls": list(tenant.calls)})
        else:
            self.answer(404, text="not found")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8471, help="0 picks a free port")
    ap.add_argument("--quiet", action="store_true", help="do not print the messages")
    ap.add_argument("--test-control", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    secret = os.environ.get("BATCHSENDER_SIGNING_SECRET", "")
    if not secret:
        sys.exit("set BATCHSENDER_SIGNING_SECRET to the connection's signing_secret (whsec_...)")
    try:
        key = decode_secret(secret)
    except ValueError:
        sys.exit("BATCHSENDER_SIGNING_SECRET is not whsec_ followed by base64")
    srv = ThreadingHTTPServer((args.host, args.port), Handler)
    srv.daemon_threads = True
    srv.module = Module(key, args.quiet, args.test_control)
    print("listening on http://%s:%d" % srv.server_address[:2], flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
