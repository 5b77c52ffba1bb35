#!/usr/bin/env python3
"""The chat page at / in headless Chromium: load it, type a message, send it, and wait until
streamed text shows in the answer. Drives the browser over the DevTools protocol (a minimal
WebSocket client from the standard library), and saves a screenshot as a test artifact.
Usage: chat_page_test.py WHALE_BINARY MODEL_DIR CHROMIUM SCREENSHOT_PATH"""
import base64
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time


class DevTools:
    """Just enough of a WebSocket client for Chrome's DevTools protocol."""

    def __init__(self, ws_url):
        host, port, path = re.match(r"ws://([^:/]+):(\d+)(/.*)", ws_url).groups()
        self.sock = socket.create_connection((host, int(port)), timeout=60)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(("GET %s HTTP/1.1\r\nHost: %s:%s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (path, host, port, key)).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert b" 101 " in head.split(b"\r\n")[0], head
        self.next_id = 0

    def _send(self, text):
        data = text.encode()
        mask = os.urandom(4)
        n = len(data)
        header = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
                                  if n < 65536 else bytes([0x80 | 127]) + n.to_bytes(8, "big"))
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def _recv_exact(self, n):
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("devtools closed")
            out += chunk
        return out

    def _recv(self):
        b0, b1 = self._recv_exact(2)
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(self._recv_exact(2), "big")
        elif n == 127:
            n = int.from_bytes(self._recv_exact(8), "big")
        return self._recv_exact(n).decode(errors="replace")

    def call(self, method, **params):
        self.next_id += 1
        self._send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self._recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(msg["error"])
                return msg.get("result", {})

    def eval(self, expression):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return r.get("result", {}).get("value")


def wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out waiting for " + what)


def main(whale, model, chromium, screenshot):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([whale, "serve", model, "--port", str(port), "--threads", "2"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    profile = tempfile.mkdtemp()
    browser = None
    try:
        def page():
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", "/")
                return c.getresponse().read().decode()
            except OSError:
                return None
        html = wait_for(page, 120, "the server")
        head = html.split("<script>")[0]
        assert "<title>whale</title>" in html and "src=" not in head and "href=" not in head, \
            "the page must be self-contained"

        browser = subprocess.Popen([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                                    "--remote-debugging-port=0", "--user-data-dir=" + profile,
                                    "--window-size=900,600", "about:blank"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = os.path.join(profile, "DevToolsActivePort")
        wait_for(lambda: os.path.exists(port_file) and open(port_file).read().strip(), 60, "Chromium")
        devtools_port = open(port_file).read().split()[0]

        def page_target():
            c = http.client.HTTPConnection("127.0.0.1", int(devtools_port), timeout=5)
            c.request("GET", "/json/list")
            targets = [t for t in json.loads(c.getresponse().read()) if t["type"] == "page"]
            return targets[0]["webSocketDebuggerUrl"] if targets else None
        dt = DevTools(wait_for(page_target, 30, "a page target"))
        dt.call("Page.enable")
        dt.call("Page.navigate", url="http://127.0.0.1:%d/" % port)
        wait_for(lambda: dt.eval("document.readyState") == "complete", 60, "the page")
        wait_for(lambda: dt.eval("document.getElementById('model').options.length") , 30, "the model list")
        dt.eval("document.getElementById('input').value = 'Hello whale';"
                "document.getElementById('form').requestSubmit(); true")
        wait_for(lambda: dt.eval("(document.querySelector('.msg.assistant span') || {}).textContent"),
                 120, "streamed text in the answer")
        user = dt.eval("document.querySelector('.msg.user').textContent")
        assert user == "Hello whale", user
        shot = dt.call("Page.captureScreenshot", format="png")
        with open(screenshot, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
    finally:
        if browser:
            browser.kill()
        server.kill()
    print("chat page test passed; screenshot in", screenshot)


if __name__ == "__main__":
    main(*sys.argv[1:5])
