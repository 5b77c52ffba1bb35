#!/usr/bin/env python3
"""Load test for `whale serve`: N concurrent streaming chat clients for a fixed time.

    python3 bench/load_test.py --port 8000 --clients 16 --seconds 60 [--pid PID]

Reports requests/s, generated tokens/s (from the usage chunks), p50/p99 time to first token and
inter-token latency, failed requests, and the server's RSS at the start and the end (with
--pid). Standard library only."""
import argparse
import http.client
import json
import statistics
import threading
import time


def rss_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def percentile(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100.0 * len(xs)))]


def client(args, stop_at, results, lock, index):
    n = 0
    while time.time() < stop_at:
        body = json.dumps({
            "model": args.model,
            "messages": [{"role": "user", "content": "Client %d, request %d: tell me about whales." % (index, n)}],
            "max_tokens": args.max_tokens, "temperature": 0.7, "stream": True,
            "stream_options": {"include_usage": True}})
        start = time.time()
        first, last, gaps, tokens, ok = None, None, [], 0, False
        try:
            c = http.client.HTTPConnection(args.host, args.port, timeout=120)
            headers = {"Content-Type": "application/json"}
            if args.api_key:
                headers["Authorization"] = "Bearer " + args.api_key
            c.request("POST", "/v1/chat/completions", body=body, headers=headers)
            r = c.getresponse()
            if r.status == 200:
                for raw in r:
                    line = raw.decode().strip()
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        ok = True
                        break
                    chunk = json.loads(data)
                    if chunk.get("usage"):
                        tokens = chunk["usage"]["completion_tokens"]
                    if chunk.get("choices") and (chunk["choices"][0]["delta"].get("content") or
                                                 chunk["choices"][0]["delta"].get("reasoning_content")):
                        now = time.time()
                        if first is None:
                            first = now - start
                        elif last is not None:
                            gaps.append(now - last)
                        last = now
        except (OSError, http.client.HTTPException, ValueError):
            ok = False
        with lock:
            results.append({"ok": ok, "ttft": first, "gaps": gaps, "tokens": tokens, "end": time.time()})
        n += 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--model", default="deepseek-chat")
    ap.add_argument("--api-key", default="")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--pid", type=int, default=0, help="server pid, for RSS")
    args = ap.parse_args()

    results, lock = [], threading.Lock()
    t0 = time.time()
    stop_at = t0 + args.seconds
    rss_start = rss_kb(args.pid) if args.pid else None
    rss_early = []
    threads = [threading.Thread(target=client, args=(args, stop_at, results, lock, i)) for i in range(args.clients)]
    for t in threads:
        t.start()
    while time.time() < stop_at:
        time.sleep(1)
        if args.pid and time.time() - t0 <= 10:
            rss_early.append(rss_kb(args.pid))
    rss_late = rss_kb(args.pid) if args.pid else None
    for t in threads:
        t.join()
    elapsed = time.time() - t0
    done = [r for r in results if r["ok"]]
    gaps = [g for r in done for g in r["gaps"]]
    ttft = [r["ttft"] for r in done if r["ttft"] is not None]
    report = {
        "clients": args.clients, "seconds": round(elapsed, 1),
        "requests": len(results), "failed": len(results) - len(done),
        "requests_per_s": round(len(done) / elapsed, 2),
        "tokens_per_s": round(sum(r["tokens"] for r in done) / elapsed, 1),
        "ttft_p50_ms": round(1000 * percentile(ttft, 50), 1) if ttft else None,
        "ttft_p99_ms": round(1000 * percentile(ttft, 99), 1) if ttft else None,
        "itl_p50_ms": round(1000 * percentile(gaps, 50), 1) if gaps else None,
        "itl_p99_ms": round(1000 * percentile(gaps, 99), 1) if gaps else None,
        "rss_kb_start": rss_start, "rss_kb_first_10s_max": max([x for x in rss_early if x] or [0]) or None,
        "rss_kb_end": rss_late,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
