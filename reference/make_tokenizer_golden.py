#!/usr/bin/env python3
"""Generate the tokenizer and chat-template goldens in tests/data/tokenizer/ from HF tokenizers/transformers.

Writes (each file is rewritten from scratch; the output is deterministic):
  corpus.jsonl       one {"text": ...} per line, built by reference/tokenizer_corpus.py (seeded)
  v3_golden.jsonl    one {"special": [...], "plain": [...]} per corpus line, DeepSeek-V3 tokenizer
  v4_golden.jsonl    the same for the DeepSeek-V4 tokenizer (if models/deepseek-v4-tokenizer exists)
  chat_golden.json   chat-template renderings (v3, r1, v3.1) and their ids
  meta.json          versions, hashes, counts and the results of every check below

`special` = tokenizers.Tokenizer.from_file(tokenizer.json).encode(text, add_special_tokens=False).ids,
i.e. added tokens (special or not) are recognised in the text. `plain` = the same tokenizer.json with its
`added_tokens` list emptied, so everything goes through the pre-tokenizer + BPE.

Checks (any failure makes the script exit non-zero after writing):
  * plain ids are all < 128000 (no added token) and never 0/1/2 (BOS/EOS/pad strings are in the BPE vocab)
  * every added token's content encodes to exactly [its id] in `special` mode, and to ids < 128000 in plain mode
  * decode(ids, skip_special_tokens=False) == text for both modes (tokenizers, and transformers' decode)
  * transformers' AutoTokenizer.encode(text, add_special_tokens=False) == special ids
Informational (recorded in meta.json): where encode_special_tokens=True (transformers' split_special_tokens)
differs from `plain`.

Chat templates are read from --templates (default ../shared/models/chat-templates relative to the repo
root); the template files themselves are not copied into the repository.

Usage:  python reference/make_tokenizer_golden.py [--out tests/data/tokenizer] [--templates DIR]
                                                  [--only corpus v3 v4 chat]
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import tokenizers  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402
from transformers.utils.chat_template_utils import render_jinja_template  # noqa: E402

from tokenizer_corpus import SEED, build_corpus  # noqa: E402

N_BPE = 128000  # size of the BPE vocabulary; every added token except ids 0..2 has an id >= this
R1_FILES = ["deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja", "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja"]
V31_FILE = "deepseek-ai-DeepSeek-V3.1.jinja"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_pair(tokdir: Path) -> tuple[Tokenizer, Tokenizer, dict]:
    spec = json.loads((tokdir / "tokenizer.json").read_text(encoding="utf-8"))
    full = Tokenizer.from_file(str(tokdir / "tokenizer.json"))
    stripped = dict(spec, added_tokens=[])
    plain = Tokenizer.from_str(json.dumps(stripped, ensure_ascii=False))
    return full, plain, spec


def load_hf(tokdir: Path):
    return AutoTokenizer.from_pretrained(str(tokdir))


# --------------------------------------------------------------------------------------------------
# corpus + encode goldens
# --------------------------------------------------------------------------------------------------

def write_corpus(out: Path) -> list[str]:
    corpus = build_corpus()
    data = "".join(json.dumps({"text": s}, ensure_ascii=False) + "\n" for s in corpus)
    (out / "corpus.jsonl").write_text(data, encoding="utf-8", newline="\n")
    print(f"[corpus] lines={len(corpus)} bytes={len(data.encode())}")
    return corpus


def read_corpus(out: Path) -> list[str]:
    with open(out / "corpus.jsonl", encoding="utf-8", newline="\n") as f:
        return [json.loads(line)["text"] for line in f.read().split("\n") if line]


def make_golden(name: str, tokdir: Path, corpus: list[str], out: Path) -> dict:
    full, plain, spec = load_pair(tokdir)
    hf = load_hf(tokdir)
    errors: list[str] = []

    # added tokens: special mode must give exactly [id]; plain mode must not produce any id >= N_BPE
    added = spec["added_tokens"]
    bad_added = []
    for a in added:
        s_ids = full.encode(a["content"], add_special_tokens=False).ids
        p_ids = plain.encode(a["content"], add_special_tokens=False).ids
        if s_ids != [a["id"]] or any(i >= N_BPE or i < 3 for i in p_ids) or p_ids == s_ids:
            bad_added.append({"id": a["id"], "content": a["content"], "special_ids": s_ids, "plain_ids": p_ids})
    if bad_added:
        errors.append(f"{len(bad_added)} added tokens fail the special/plain check: {bad_added[:5]}")

    lines = []
    n_special = n_plain = n_differ = 0
    decode_fail = []
    hf_fail = []
    split_vs_plain = []
    split_vs_special = 0
    for i, text in enumerate(corpus):
        s_ids = full.encode(text, add_special_tokens=False).ids
        p_ids = plain.encode(text, add_special_tokens=False).ids
        full.encode_special_tokens = True
        x_ids = full.encode(text, add_special_tokens=False).ids
        full.encode_special_tokens = False
        if any(t >= N_BPE or t < 3 for t in p_ids):
            errors.append(f"line {i + 1}: plain ids contain an added-token id")
        for mode, tok, ids in (("special", full, s_ids), ("plain", plain, p_ids), ("plain-with-full", full, p_ids)):
            back = tok.decode(ids, skip_special_tokens=False)
            if back != text:
                decode_fail.append({"line": i + 1, "mode": mode, "text": text, "decoded": back})
        if hf.encode(text, add_special_tokens=False) != s_ids:
            hf_fail.append({"line": i + 1, "what": "encode"})
        if hf.decode(s_ids, skip_special_tokens=False) != text:
            hf_fail.append({"line": i + 1, "what": "decode"})
        if x_ids != p_ids:
            split_vs_plain.append(i + 1)
        if x_ids != s_ids:
            split_vs_special += 1
        n_special += len(s_ids)
        n_plain += len(p_ids)
        n_differ += s_ids != p_ids
        lines.append(json.dumps({"special": s_ids, "plain": p_ids}, separators=(",", ":")))
    path = out / f"{name}_golden.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")

    if decode_fail:
        errors.append(f"{len(decode_fail)} decode mismatches, first: {decode_fail[:3]!r}")
    if hf_fail:
        errors.append(f"{len(hf_fail)} transformers mismatches, first: {hf_fail[:5]}")
    by_content = {a["content"]: a["id"] for a in added}
    ids_of = {k: by_content.get(k) for k in ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>",
                                              "<｜User｜>", "<｜Assistant｜>", "<think>", "</think>", "<|EOT|>",
                                              "<｜fim▁hole｜>", "<｜tool▁calls▁begin｜>", "｜DSML｜")}
    meta = {
        "tokenizer": str(tokdir.relative_to(ROOT)),
        "tokenizer_json_sha256": sha256(tokdir / "tokenizer.json"),
        "golden_file": path.name,
        "lines": len(corpus),
        "tokens_special": n_special,
        "tokens_plain": n_plain,
        "lines_where_special_differs_from_plain": n_differ,
        "added_tokens": len(added),
        "added_tokens_checked": len(added) - len(bad_added),
        "ids": ids_of,
        "decode_roundtrip_failures": decode_fail,
        "transformers_mismatches": hf_fail,
        "encode_special_tokens_true": {
            "note": "Tokenizer.encode_special_tokens=True (transformers split_special_tokens=True) only stops "
                    "matching added tokens flagged special; non-special added tokens like <｜User｜> still match",
            "lines_differing_from_plain": len(split_vs_plain),
            "first_lines_differing_from_plain": split_vs_plain[:20],
            "lines_differing_from_special": split_vs_special,
        },
        "transformers_tokenizer_class": type(hf).__name__,
        "transformers_encode_adds_bos": hf.encode("x") != hf.encode("x", add_special_tokens=False),
    }
    print(f"[{name}] lines={len(corpus)} tokens special={n_special} plain={n_plain} differ={n_differ} "
          f"bytes={path.stat().st_size} decode_fail={len(decode_fail)} hf_fail={len(hf_fail)} "
          f"split_special!=plain={len(split_vs_plain)} ids={ids_of}")
    return meta, errors


# --------------------------------------------------------------------------------------------------
# chat goldens
# --------------------------------------------------------------------------------------------------

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Get the current weather for a location.",
        "parameters": {"type": "object", "properties": {
            "location": {"type": "string", "description": "City name"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["location"]}}},
    {"type": "function", "function": {
        "name": "get_time", "description": "Get the local time in a time zone.",
        "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]}}},
]


def _call(fmt: str, name: str, args: dict) -> dict:
    # v3 / r1 concatenate `arguments` as a string (the DeepSeek convention: a JSON string). The V3.1 file
    # (llama.cpp's copy) applies `| tojson` to it, so it gets the object; that renders exactly what the
    # hub V3.1 template renders for the JSON string json.dumps(args, ensure_ascii=False).
    arguments = args if fmt == "v3.1" else json.dumps(args, ensure_ascii=False)
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def chat_cases(fmt: str) -> list[dict]:
    sys1 = {"role": "system", "content": "You are a helpful assistant."}
    sys2 = {"role": "system", "content": "Always answer in English."}
    u1 = {"role": "user", "content": "Hello! Who are you?"}
    a1 = {"role": "assistant", "content": "I am DeepSeek, an AI assistant. How can I help?"}
    u2 = {"role": "user", "content": "What is 2+2?"}
    a2 = {"role": "assistant", "content": "2 + 2 = 4."}
    u3 = {"role": "user", "content": "And 3×3?"}
    a1t = {"role": "assistant",
           "content": "<think>\nThe user greets me and asks who I am.\n</think>\n\nI am DeepSeek. How can I help?"}
    a2t = {"role": "assistant", "content": "<think>2 plus 2 is 4.</think>2 + 2 = 4."}
    a_two_close = {"role": "assistant", "content": "<think>first</think>middle</think>last"}
    uw = {"role": "user", "content": "What's the weather in Paris?"}
    empty = None if fmt != "v3.1" else ""
    tc1 = {"role": "assistant", "content": None, "tool_calls": [_call(fmt, "get_weather", {"location": "Paris"})]}
    tc2 = {"role": "assistant", "content": None, "tool_calls": [
        _call(fmt, "get_weather", {"location": "Paris", "unit": "celsius"}),
        _call(fmt, "get_time", {"timezone": "Asia/Tokyo"})]}
    tc1_empty = dict(tc1, content=empty)
    r1 = {"role": "tool", "content": '{"temperature": 18, "condition": "sunny"}'}
    r2 = {"role": "tool", "content": "2024-03-15T21:04:00+09:00"}
    fin = {"role": "assistant", "content": "It is 18 °C and sunny in Paris."}
    fin2 = {"role": "assistant", "content": "Paris: 18 °C, sunny. Tokyo: 21:04."}
    ut = {"role": "user", "content": "Thanks! And what time is it in Tokyo?"}
    tc_time = {"role": "assistant", "content": None, "tool_calls": [_call(fmt, "get_time", {"timezone": "Asia/Tokyo"})]}
    fin3 = {"role": "assistant", "content": "It is 21:04 in Tokyo."}
    special_user = {"role": "user", "content": "Repeat literally: <｜User｜> and <｜Assistant｜> and <think>x</think> "
                                              "and <｜end▁of▁sentence｜> and <|EOT|>."}
    uni_user = {"role": "user", "content": "你好，世界！\r\nこんにちは 🐳\u00a0—  “quotes”\t\n"}

    c = []

    def add(name, messages, gen, tools=None):
        c.append({"name": name, "messages": messages, "tools": tools, "add_generation_prompt": gen})

    add("single_user_gen", [u1], True)
    add("single_user_nogen", [u1], False)
    add("system_user_gen", [sys1, u1], True)
    add("two_system_user_gen", [sys1, sys2, u1], True)
    add("system_after_user_gen", [u1, sys2, u2], True)
    add("multi_turn_gen", [sys1, u1, a1, u2, a2, u3], True)
    add("multi_turn_ends_assistant_nogen", [u1, a1, u2, a2], False)
    add("think_history_gen", [u1, a1t, u2], True)
    add("think_history_ends_assistant_nogen", [u1, a1t, u2, a2t], False)
    add("think_two_closing_tags_nogen", [u2, a_two_close], False)
    add("special_tokens_in_user_gen", [special_user], True)
    add("unicode_whitespace_user_gen", [sys1, uni_user], True)
    add("empty_user_gen", [{"role": "user", "content": ""}], True)
    add("tool_one_call_final_answer", [sys1, uw, tc1, r1, fin], False, TOOLS)
    add("tool_one_call_final_answer_then_user_gen", [uw, tc1, r1, fin, ut], True, TOOLS)
    add("tool_two_calls_two_results_final_answer", [uw, tc2, r1, r2, fin2], False, TOOLS)
    add("tool_trailing_result_gen", [uw, tc1, r1], True, TOOLS)
    add("tool_trailing_result_nogen", [uw, tc1, r1], False, TOOLS)
    add("tool_trailing_two_results_gen", [uw, tc2, r1, r2], True, TOOLS)
    add("tool_two_rounds", [uw, tc1, r1, fin, ut, tc_time, r2, fin3], False, TOOLS)
    add("tool_call_no_tools_param", [uw, tc1, r1, fin], False, None)
    if fmt == "v3.1":
        add("tool_call_empty_content", [uw, tc1_empty, r1, fin], False, TOOLS)
        add("tool_call_with_content", [uw, dict(tc1, content="Let me check the weather."), r1, fin], False, TOOLS)
        add("prefix_assistant", [u1, {"role": "assistant", "content": "Sure, I", "prefix": True}], False)
        add("prefix_assistant_with_think", [u1, {"role": "assistant", "content": "<think>hm</think>Sure", "prefix": True}],
            False)
    return c


def render(tok, template: str, case: dict, extra: dict) -> tuple[str, str]:
    """apply_chat_template(tokenize=False); on failure (transformers 5 drops None-valued message keys, which the
    V3/R1 tool-call branches test with `content is none`) fall back to transformers' own render_jinja_template
    with the messages as given."""
    kw = dict(tools=case["tools"], add_generation_prompt=case["add_generation_prompt"], **extra)
    has_none = any(v is None for m in case["messages"] for v in m.values())
    try:
        text = tok.apply_chat_template(case["messages"], chat_template=template, tokenize=False, **kw)
        how = "apply_chat_template"
    except Exception as e:  # noqa: BLE001
        if not has_none:
            raise
        how = f"render_jinja_template (apply_chat_template raised {type(e).__name__}: {e})"
        text = None
    if has_none:
        raw = render_jinja_template(conversations=[case["messages"]], chat_template=template,
                                    **{**tok.special_tokens_map, **kw})[0][0]
        if text is not None and text != raw:
            how = "apply_chat_template (differs from render with None kept)"
        text = raw if text is None else text
    return text, how


def make_chat(templates: Path, v3dir: Path, out: Path) -> tuple[dict, list[str]]:
    errors: list[str] = []
    tok = load_hf(v3dir)
    full = Tokenizer.from_file(str(v3dir / "tokenizer.json"))
    v3_template = json.loads((v3dir / "tokenizer_config.json").read_text(encoding="utf-8"))["chat_template"]

    # pick the R1-Distill template that behaves like DeepSeek-R1's own: generation prompt "<｜Assistant｜><think>\n"
    r1_texts = {f: (templates / f).read_text(encoding="utf-8") for f in R1_FILES}
    probe = [{"role": "user", "content": "x"}]
    r1_gen = {f: tok.apply_chat_template(probe, chat_template=t, tokenize=False, add_generation_prompt=True)
              for f, t in r1_texts.items()}
    r1_pick = [f for f in R1_FILES if r1_gen[f].endswith("<｜User｜>x<｜Assistant｜><think>\n")]
    if not r1_pick:
        raise SystemExit(f"no R1-Distill template gives the R1 generation prompt: {r1_gen}")
    r1_file = r1_pick[0]
    diff = list(difflib.unified_diff(r1_texts[R1_FILES[0]].splitlines(), r1_texts[R1_FILES[1]].splitlines(),
                                     R1_FILES[0], R1_FILES[1], lineterm="", n=0))
    formats = {
        "v3": (v3_template, "tokenizer_config.json chat_template", [None]),
        "r1": (r1_texts[r1_file], r1_file, [None]),
        "v3.1": ((templates / V31_FILE).read_text(encoding="utf-8"), V31_FILE, [False, True]),
    }

    cases, skipped, renderers = [], [], {}
    for fmt, (template, source, thinkings) in formats.items():
        for case in chat_cases(fmt):
            seen = {}
            for thinking in thinkings:
                extra = {} if thinking is None else {"thinking": thinking}
                try:
                    text, how = render(tok, template, case, extra)
                except Exception as e:  # noqa: BLE001
                    skipped.append({"format": fmt, "name": case["name"], "thinking": thinking,
                                    "error": f"{type(e).__name__}: {e}"})
                    continue
                if text in seen.values():
                    continue  # thinking made no difference for this case; keep only the first rendering
                seen[thinking] = text
                if how != "apply_chat_template":
                    renderers[f"{fmt}/{case['name']}"] = how
                ids = full.encode(text, add_special_tokens=False).ids
                if tok(text, add_special_tokens=False)["input_ids"] != ids:
                    errors.append(f"chat {fmt}/{case['name']}: transformers ids differ")
                if full.decode(ids, skip_special_tokens=False) != text:
                    errors.append(f"chat {fmt}/{case['name']}: decode round trip fails")
                cases.append({"format": fmt, "name": case["name"], "messages": case["messages"],
                              "tools": case["tools"], "add_generation_prompt": case["add_generation_prompt"],
                              "thinking": thinking, "text": text, "ids": ids})
    path = out / "chat_golden.json"
    path.write_text("[\n" + ",\n".join(json.dumps(c, ensure_ascii=False) for c in cases) + "\n]\n",
                    encoding="utf-8", newline="\n")
    print(f"[chat] cases={len(cases)} skipped={len(skipped)} bytes={path.stat().st_size} r1={r1_file}")
    for s in skipped:
        print(f"[chat] skipped {s}")
    for k, v in renderers.items():
        print(f"[chat] {k}: {v}")
    print("[chat] R1-Distill template diff:\n" + "\n".join(diff))
    meta = {
        "file": path.name,
        "cases": len(cases),
        "per_format": {f: sum(c["format"] == f for c in cases) for f in formats},
        "sources": {f: v[1] for f, v in formats.items()},
        "template_sha256": {f: hashlib.sha256(v[0].encode()).hexdigest() for f, v in formats.items()},
        "r1_generation_prompt_probe": r1_gen,
        "r1_distill_template_diff": diff,
        "skipped": skipped,
        "rendered_without_apply_chat_template": renderers,
        "bos_token": tok.bos_token,
    }
    return meta, errors


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "tests" / "data" / "tokenizer"))
    ap.add_argument("--models", default=str(ROOT / "models"))
    ap.add_argument("--templates", default=str(ROOT.parent / "shared" / "models" / "chat-templates"))
    ap.add_argument("--only", nargs="*", default=None, choices=["corpus", "v3", "v4", "chat"])
    args = ap.parse_args(argv)
    transformers.logging.set_verbosity_error()
    out, models, templates = Path(args.out), Path(args.models), Path(args.templates)
    out.mkdir(parents=True, exist_ok=True)
    todo = args.only or ["corpus", "v3", "v4", "chat"]
    print(f"tokenizers {tokenizers.__version__}, transformers {transformers.__version__}, out={out}")

    meta_path = out / "meta.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}
    meta.update({"tokenizers_version": tokenizers.__version__, "transformers_version": transformers.__version__,
                 "generator": "reference/make_tokenizer_golden.py"})
    errors: list[str] = []
    corpus = write_corpus(out) if "corpus" in todo else read_corpus(out)
    if "corpus" in todo:
        meta["corpus"] = {"file": "corpus.jsonl", "lines": len(corpus), "seed": SEED,
                          "bytes": (out / "corpus.jsonl").stat().st_size, "sha256": sha256(out / "corpus.jsonl")}
    for name in ("v3", "v4"):
        tokdir = models / f"deepseek-{name}-tokenizer"
        if name in todo:
            if not (tokdir / "tokenizer.json").exists():
                print(f"[{name}] {tokdir} has no tokenizer.json, skipped")
                meta.pop(name, None)
                continue
            meta[name], errs = make_golden(name, tokdir, corpus, out)
            errors += errs
    if "chat" in todo:
        if not templates.is_dir():
            raise SystemExit(f"chat templates not found at {templates} (pass --templates DIR)")
        meta["chat"], errs = make_chat(templates, models / "deepseek-v3-tokenizer", out)
        errors += errs
    meta_path.write_text(json.dumps(dict(sorted(meta.items())), ensure_ascii=False, indent=1) + "\n",
                         encoding="utf-8", newline="\n")
    for e in errors:
        print("ERROR:", e)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
