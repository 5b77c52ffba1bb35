#!/usr/bin/env python3
"""The chat page at / in headless Chromium: load it, send a message (the page's #say= hook),
and see streamed text arrive. Saves a screenshot beside the build as a test artifact.
Usage: chat_page_test.py WHALE_BINARY MODEL_DIR CHROMIUM SCREENSHOT_PATH"""
import http.client
import re
import socket
import subprocess
import sys
import time


def main(whale, model, chromium, screenshot):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([whale, "serve", model, "--port", str(port), "--threads", "2"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", "/")
                page = c.getresponse().read().decode()
                break
            except OSError:
                time.sleep(0.1)
        assert "<title>whale</title>" in page and "http" not in page.split("<script>")[0].replace("http-equiv", ""), \
            "the page must be self-contained"
        url = "http://127.0.0.1:%d/#say=Hello%%20whale" % port
        flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=20000"]
        # Virtual time may run out before real network replies on a busy machine: a few tries.
        for attempt in range(5):
            dom = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True,
                                 timeout=120).stdout
            answer = re.search(r'<div class="msg assistant">(.*?)</div>', dom, re.S)
            if answer and re.sub(r"<[^>]+>", "", answer.group(1)).strip():
                break
        log = re.search(r'<div id="log"[^>]*>(.*?)</div>\s*<form', dom, re.S)
        shown = log.group(1)[:1500] if log else dom[:1500]
        assert '<div class="msg user">Hello whale</div>' in dom, "no user message: " + shown
        assert answer and re.sub(r"<[^>]+>", "", answer.group(1)).strip(), "no answer: " + shown
        subprocess.run(flags + ["--window-size=900,600", "--screenshot=" + screenshot, url],
                       capture_output=True, timeout=120)
    finally:
        server.kill()
    print("chat page test passed; screenshot in", screenshot)


if __name__ == "__main__":
    main(*sys.argv[1:5])
