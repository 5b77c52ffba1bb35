#!/usr/bin/env python3
"""`whale chat` in a pseudo-terminal: a two-turn conversation, Ctrl-C mid-answer returning to
the prompt, /save, /exit. Usage: chat_pty_test.py WHALE_BINARY MODEL_DIR"""
import json
import os
import pty
import select
import sys
import tempfile
import time


def main(whale, model_dir):
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(whale, [whale, "chat", model_dir, "-n", "100000", "--temp", "0", "--threads", "1",
                         "--ctx", "100000"])
    out = b""

    def read_until(token, timeout):
        nonlocal out
        deadline = time.time() + timeout
        while time.time() < deadline:
            if token in out:
                i = out.index(token) + len(token)
                seen, out = out[:i], out[i:]
                return seen
            r, _, _ = select.select([fd], [], [], 0.1)
            if r:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
                if token in out:
                    i = out.index(token) + len(token)
                    seen, out = out[:i], out[i:]
                    return seen
        raise AssertionError("timed out waiting for %r; got %r" % (token, out[-2000:]))

    def send(text):
        os.write(fd, text.encode())

    try:
        read_until(b"> ", 120)
        # Answers are long (no EOS from a random model, -n 100000): stop each with Ctrl-C.
        for turn in ("Hello there", "And a second question"):
            send(turn + "\n")
            time.sleep(1.5)
            send("\x03")
            seen = read_until(b"(stopped)", 60)
            assert len(seen) > 20, seen
            read_until(b"> ", 30)
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "conversation.json")
            send("/save " + path + "\n")
            read_until(b"saved 4 messages", 30)
            read_until(b"> ", 30)
            saved = json.load(open(path))
            assert [m["role"] for m in saved] == ["user", "assistant", "user", "assistant"], saved
            assert saved[2]["content"] == "And a second question", saved
        # Ctrl-C at the prompt gives a new prompt; the process is still there.
        send("\x03")
        read_until(b"> ", 30)
        send("/exit\n")
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    except Exception:
        os.kill(pid, 9)
        raise
    print("chat pty test passed")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
