#!/usr/bin/env python3
"""`whale serve` driven by the official openai client and raw HTTP: chat (plain and streamed),
completions with suffix (FIM), models, usage with cache hits, errors, API key, disconnects,
concurrent batching, SIGTERM. Usage: server_test.py WHALE_BINARY MODEL_DIR"""
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import openai

KEY = "test-key"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(whale, model, *extra):
    port = free_port()
    proc = subprocess.Popen([whale, "serve", model, "--port", str(port), "--api-key", KEY,
                             "--threads", "2", "--ctx", "2048", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("server did not start: " + proc.stdout.read().decode(errors="replace"))


def raw(port, method, path, body=None, key=KEY, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    h = {"Content-Type": "application/json"}
    if key:
        h["Authorization"] = "Bearer " + key
    h.update(headers or {})
    c.request(method, path, body=body, headers=h)
    r = c.getresponse()
    return r.status, r.read().decode()


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def main(whale, model):
    proc, port = start(whale, model, "--parallel", "4")
    try:
        client = openai.OpenAI(base_url="http://127.0.0.1:%d/v1" % port, api_key=KEY)
        name = os.path.basename(model.rstrip("/"))

        models = [m.id for m in client.models.list().data]
        check(name in models and "deepseek-chat" in models, models)

        msgs = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello there"}]
        r1 = client.chat.completions.create(model=name, messages=msgs, max_tokens=12, temperature=0)
        u = r1.usage
        check(r1.choices[0].finish_reason in ("stop", "length"), r1)
        check(u.total_tokens == u.prompt_tokens + u.completion_tokens, u)
        extra = u.model_extra
        check(extra["prompt_cache_hit_tokens"] + extra["prompt_cache_miss_tokens"] == u.prompt_tokens, u)

        # The same request again is answered from the cache, with the same text.
        again = client.chat.completions.create(model=name, messages=msgs, max_tokens=12, temperature=0)
        check(u.model_extra["prompt_cache_hit_tokens"] == 0, u)
        check(again.usage.model_extra["prompt_cache_hit_tokens"] == u.prompt_tokens - 1, again.usage)
        check(again.choices[0].message.content == r1.choices[0].message.content, (again, r1))

        # Log-probabilities: greedy picks the most likely token; top_logprobs lists 5.
        lp = client.chat.completions.create(model=name, messages=msgs, max_tokens=4, temperature=0,
                                            logprobs=True, top_logprobs=5)
        content = lp.choices[0].logprobs.content
        check(len(content) == lp.usage.completion_tokens, lp)
        for e in content:
            check(len(e.top_logprobs) == 5 and e.logprob <= 0, e)
            check(abs(e.logprob - e.top_logprobs[0].logprob) < 1e-6, e)
        streamed_lp = []
        for chunk in client.chat.completions.create(model=name, messages=msgs, max_tokens=4, temperature=0,
                                                    logprobs=True, top_logprobs=2, stream=True):
            if chunk.choices and chunk.choices[0].logprobs:
                streamed_lp += chunk.choices[0].logprobs.content
        check([e.token for e in streamed_lp] == [e.token for e in content], (streamed_lp, content))
        legacy = client.completions.create(model=name, prompt="Once upon", max_tokens=3, temperature=0, logprobs=3)
        check(len(legacy.choices[0].logprobs.token_logprobs) == 3, legacy)
        check(all(len(t) == 3 for t in legacy.choices[0].logprobs.top_logprobs), legacy)

        # A second turn shares the first turn's prompt: its KV is reused.
        msgs2 = msgs + [{"role": "assistant", "content": r1.choices[0].message.content},
                        {"role": "user", "content": "And again?"}]
        r2 = client.chat.completions.create(model=name, messages=msgs2, max_tokens=8, temperature=0)
        check(r2.usage.model_extra["prompt_cache_hit_tokens"] > 0, r2.usage)

        # Same request again: identical answer with a (larger) cache hit.
        r3 = client.chat.completions.create(model=name, messages=msgs2, max_tokens=8, temperature=0)
        check(r3.choices[0].message.content == r2.choices[0].message.content, (r2, r3))

        # Streaming gives the same text, then usage, then [DONE].
        pieces, usage = [], None
        for chunk in client.chat.completions.create(model=name, messages=msgs, max_tokens=12, temperature=0,
                                                    stream=True, stream_options={"include_usage": True}):
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            if chunk.usage:
                usage = chunk.usage
        check("".join(pieces) == r1.choices[0].message.content, (pieces, r1))
        check(usage is not None and usage.completion_tokens == u.completion_tokens, usage)

        # Completions and fill-in-the-middle.
        c = client.completions.create(model=name, prompt="def add(a, b):", suffix="\n    return c", max_tokens=5, temperature=0)
        check(c.usage.completion_tokens >= 1 and isinstance(c.choices[0].text, str), c)

        # Eight concurrent greedy requests give what each gives alone (batching changes nothing).
        prompts = ["Count: %d, %d, %d" % (i, i + 1, i + 2) for i in range(8)]
        alone = [client.completions.create(model=name, prompt=p, max_tokens=10, temperature=0).choices[0].text
                 for p in prompts]
        together = [None] * 8

        def worker(i):
            together[i] = client.completions.create(model=name, prompt=prompts[i], max_tokens=10,
                                                    temperature=0).choices[0].text
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        check(together == alone, (together, alone))

        # Errors in OpenAI's shape.
        def expect(status, method, path, body=None, key=KEY, contains=""):
            s, text = raw(port, method, path, body, key)
            check(s == status, (status, s, path, body, text))
            if status >= 400:
                err = json.loads(text)["error"]
                check("message" in err and "type" in err, text)
                check(contains in text, (contains, text))
        good = json.dumps({"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        expect(200, "POST", "/v1/chat/completions", good)
        expect(200, "POST", "/chat/completions", good)
        expect(401, "POST", "/v1/chat/completions", good, key="wrong")
        expect(401, "POST", "/v1/chat/completions", good, key=None)
        expect(200, "GET", "/health", key=None)
        expect(400, "POST", "/v1/chat/completions", "{not json", contains="JSON object")
        expect(400, "POST", "/v1/chat/completions", "", contains="JSON object")
        expect(400, "POST", "/v1/chat/completions", json.dumps({"model": name}), contains="messages")
        expect(400, "POST", "/v1/chat/completions", json.dumps({"model": name, "messages": "hi"}), contains="messages")
        expect(400, "POST", "/v1/chat/completions", json.dumps({"model": name, "messages": [{"role": "wizard", "content": "x"}]}), contains="unknown role")
        expect(400, "POST", "/v1/chat/completions", json.dumps({"model": name, "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}), contains="max_tokens")
        expect(400, "POST", "/v1/chat/completions", json.dumps({"model": name, "messages": [{"role": "user", "content": "x"}], "max_tokens": "10"}), contains="max_tokens")
        expect(400, "POST", "/v1/chat/completions", json.dumps({"model": name, "messages": [{"role": "user", "content": "x"}], "temperature": -1}), contains="temperature")
        expect(400, "POST", "/v1/chat/completions", json.dumps({"model": name, "messages": [{"role": "user", "content": "x"}], "top_p": 1.5}), contains="top_p")
        expect(400, "POST", "/v1/chat/completions", json.dumps({"model": name, "messages": [{"role": "user", "content": "x"}], "stream": "true"}), contains="stream")
        expect(400, "POST", "/v1/chat/completions", json.dumps({"model": name, "messages": [{"role": "user", "content": "x"}], "n": 3}), contains="n = 1")
        expect(400, "POST", "/v1/chat/completions", json.dumps({"model": name, "messages": [{"role": "user", "content": "word " * 3000}]}), contains="context_length_exceeded")
        expect(400, "POST", "/v1/chat/completions", "[" * 100000 + "]" * 100000, contains="nesting")
        expect(413, "POST", "/v1/chat/completions", json.dumps({"model": name, "messages": [{"role": "user", "content": "x" * (5 << 20)}]}))
        expect(404, "POST", "/v1/chat/completions", json.dumps({"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}), contains="model_not_found")
        expect(404, "GET", "/v1/nowhere")
        expect(400, "POST", "/v1/chat/completions", json.dumps({"model": name, "messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 21}), contains="top_logprobs")
        expect(200, "POST", "/v1/chat/completions", json.dumps({"model": name, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2, "unknown_field": 1}))
        # Wrong types anywhere are 400s (or ignored where OpenAI ignores them), never 500s.
        expect(400, "POST", "/v1/chat/completions", json.dumps({"model": 5, "messages": [{"role": "user", "content": "x"}]}), contains="model")
        expect(400, "POST", "/v1/completions", json.dumps({"model": [], "prompt": "x"}), contains="model")
        expect(400, "POST", "/v1/chat/completions", json.dumps({"model": name, "messages": [{"role": "user", "content": [{"type": 1}]}]}), contains="content")
        expect(200, "POST", "/v1/chat/completions", json.dumps({"model": name, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2, "stream_options": {"include_usage": "yes"}, "thinking": {"type": True}}))
        expect(400, "POST", "/v1/chat/completions", json.dumps({"model": name, "messages": [{"role": "user", "content": "x"}], "stop": "s" * 200}), contains="stop")

        # A client that disconnects mid-stream cancels its request.
        s = socket.create_connection(("127.0.0.1", port))
        body = json.dumps({"model": name, "messages": [{"role": "user", "content": "go"}], "max_tokens": 1500, "stream": True})
        s.sendall(("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                   "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (KEY, len(body), body)).encode())
        got, deadline = b"", time.time() + 30
        while b"data:" not in got and time.time() < deadline:
            got += s.recv(4096)
        check(b"data:" in got, "no stream started")
        s.close()
        deadline = time.time() + 30
        while time.time() < deadline:
            _, metrics = raw(port, "GET", "/metrics")
            if "whale_active_requests 0" in metrics:
                break
            time.sleep(0.2)
        check("whale_active_requests 0" in metrics, metrics)
        check("whale_prompt_cache_hit_tokens_total" in metrics, metrics)
        check('whale_time_to_first_token_seconds_bucket{le="+Inf"}' in metrics, metrics)
        check("whale_inter_token_latency_seconds_count" in metrics, metrics)

        # SIGTERM with an answer streaming: it finishes (finish_reason, [DONE]), new requests are
        # refused, and the process exits 0.
        s = socket.create_connection(("127.0.0.1", port))
        body = json.dumps({"model": name, "messages": [{"role": "user", "content": "go"}], "max_tokens": 60,
                           "stream": True, "temperature": 0})
        s.sendall(("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                   "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (KEY, len(body), body)).encode())
        got = b""
        while b"data:" not in got:
            got += s.recv(4096)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        try:
            status, _ = raw(port, "POST", "/v1/chat/completions", good)
            check(status == 503, status)
        except OSError:
            pass  # already closed: refused is fine too
        s.settimeout(60)
        while b"[DONE]" not in got:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        check(b"[DONE]" in got and b'"finish_reason":"length"' in got, got[-500:])
        s.close()
        check(proc.wait(timeout=60) == 0, "exit status")
    finally:
        if proc.poll() is None:
            proc.kill()

    # A reasoning format: the answer opens inside <think>, so the text goes to reasoning_content
    # (a random model never closes it) and every token counts as reasoning.
    proc, port = start(whale, model, "--chat-format", "r1", "--parallel", "1", "--queue", "0")
    try:
        client = openai.OpenAI(base_url="http://127.0.0.1:%d/v1" % port, api_key=KEY)
        rr = client.chat.completions.create(model="deepseek-reasoner", max_tokens=6, temperature=0,
                                            messages=[{"role": "user", "content": "Think first."}])
        m = rr.choices[0].message
        check(m.model_extra.get("reasoning_content"), rr)
        check(rr.usage.completion_tokens_details.reasoning_tokens == rr.usage.completion_tokens, rr.usage)
        kinds = set()
        for chunk in client.chat.completions.create(model="deepseek-reasoner", max_tokens=6, temperature=0, stream=True,
                                                    messages=[{"role": "user", "content": "Think first."}]):
            if chunk.choices and chunk.choices[0].delta.model_extra.get("reasoning_content"):
                kinds.add("reasoning")
        check(kinds == {"reasoning"}, kinds)

        # One slot and no queue: while a long answer runs, another request gets a 429.
        busy = client.chat.completions.create(model="deepseek-reasoner", max_tokens=1500, stream=True,
                                              messages=[{"role": "user", "content": "Long answer"}])
        next(iter(busy))
        s, text = raw(port, "POST", "/v1/chat/completions", json.dumps(
            {"model": "deepseek-chat", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}))
        check(s == 429 and "rate_limit" in text, (s, text))
        busy.close()
    finally:
        proc.kill()
    print("server test passed")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
