#!/usr/bin/env python3
"""Generate golden test fixtures for the whale engine from HF transformers.

For every fixture this builds a tiny random DeepSeek-V2 / V3 model with the
*native* transformers classes (no remote code), stores its weights exactly the
way real DeepSeek HF checkpoints do (per-expert tensor names, bf16, or FP8
e4m3 with 128x128 block scales `weight_scale_inv`), and records the fp32
logits of a full 64-token forward pass.

The golden logits are computed by a model whose fp32 parameters are *exactly*
the values the checkpoint decodes to (bf16 -> fp32, or fp8 * scale in fp32),
and every fixture is re-checked by reloading the written files into a fresh
transformers model through `from_pretrained` (transformers' own per-expert ->
fused key mapping).

Usage:  python reference/make_fixtures.py [--out tests/fixtures] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import (
    DeepseekV2Config,
    DeepseekV2ForCausalLM,
    DeepseekV3Config,
    DeepseekV3ForCausalLM,
)

N_TOKENS = 64
FP8_BLOCK = 128
FP8_MAX = 448.0  # largest finite float8_e4m3fn value

YARN_V3 = {
    "type": "yarn",
    "factor": 4.0,
    "original_max_position_embeddings": 64,
    "beta_fast": 32,
    "beta_slow": 1,
    "mscale": 1.0,
    "mscale_all_dim": 1.0,
}
YARN_V2 = dict(YARN_V3, mscale=0.707, mscale_all_dim=0.707)

V3_SMALL = dict(
    vocab_size=256,
    hidden_size=64,
    num_hidden_layers=3,
    first_k_dense_replace=1,
    moe_layer_freq=1,
    num_attention_heads=4,
    num_key_value_heads=4,
    q_lora_rank=48,
    kv_lora_rank=32,
    qk_nope_head_dim=16,
    qk_rope_head_dim=8,
    v_head_dim=16,
    intermediate_size=96,
    moe_intermediate_size=32,
    n_routed_experts=16,
    n_shared_experts=1,
    num_experts_per_tok=4,
    n_group=4,
    topk_group=2,
    routed_scaling_factor=2.5,
    norm_topk_prob=True,
    scoring_func="sigmoid",
    topk_method="noaux_tc",
    rope_theta=10000.0,
    rope_scaling=YARN_V3,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    num_nextn_predict_layers=1,
)

V3_FP8 = dict(
    V3_SMALL,
    vocab_size=320,
    hidden_size=256,
    num_hidden_layers=2,
    first_k_dense_replace=1,
    num_attention_heads=4,
    num_key_value_heads=4,
    q_lora_rank=192,
    kv_lora_rank=128,
    qk_nope_head_dim=32,
    qk_rope_head_dim=16,
    v_head_dim=32,
    intermediate_size=320,
    moe_intermediate_size=32,  # see the size-budget note below
    n_routed_experts=8,
    n_shared_experts=1,
    num_experts_per_tok=2,
    n_group=2,
    topk_group=1,
    num_nextn_predict_layers=0,
)
# Size budget (tests/fixtures must stay well under 5 MB): moe_intermediate_size 160 would make
# each FP8 fixture ~2.2 MB. 32 keeps partial edge blocks in both expert dims (gate/up [32, 256]
# -> 1x2 scale blocks, down [256, 32] -> 2x1) while attention and the dense MLP still cover
# several full 128x128 blocks plus partial ones.

FP8_QCFG = {
    "activation_scheme": "dynamic",
    "fmt": "e4m3",
    "quant_method": "fp8",
    "weight_block_size": [FP8_BLOCK, FP8_BLOCK],
}

# V2 shares V3_SMALL's shapes; it differs in routing, the q projection, YaRN and MTP.
V2_SMALL = dict(
    {k: v for k, v in V3_SMALL.items() if k != "num_nextn_predict_layers"},
    q_lora_rank=None,
    n_routed_experts=8,
    n_shared_experts=2,
    num_experts_per_tok=3,
    n_group=1,
    topk_group=1,
    topk_method="greedy",
    scoring_func="softmax",
    norm_topk_prob=False,
    routed_scaling_factor=1.0,
    rope_scaling=YARN_V2,
)

FIXTURES = {
    "v3_yarn": dict(
        arch="v3",
        seed=1001,
        init_std=0.1,
        cfg=V3_SMALL,
        fp8=None,
        mtp=True,
        desc="DeepSeek-V3 tiny: MLA q_lora, YaRN x4 (mscale 1/1), 1 dense + 2 MoE layers "
        "(16 experts, 4 groups, top-2 groups, top-4, sigmoid noaux_tc, bias, norm, x2.5), "
        "randomized norms/bias, bf16 weights, extra MTP layer 3 tensors",
    ),
    "v3_fp8": dict(
        arch="v3",
        seed=2002,
        init_std=0.05,
        cfg=V3_FP8,
        fp8="e4m3",
        mtp=False,
        desc="DeepSeek-V3 FP8 e4m3 128x128 block weights (amax/448 scales, partial edge blocks), "
        "1 dense + 1 MoE layer (8 experts, 2 groups, top-1 group, top-2), YaRN x4; logits from "
        "fp32 forward with dequantized weights",
    ),
    "v31_fp8_ue8m0": dict(
        arch="v3",
        seed=3003,
        init_std=0.05,
        cfg=V3_FP8,
        fp8="ue8m0",
        mtp=False,
        desc="DeepSeek-V3.1-style FP8 e4m3 with ue8m0 (power-of-two, stored float32) 128x128 block "
        "scales; otherwise like v3_fp8 (different seed)",
    ),
    "v2_lite": dict(
        arch="v2",
        seed=4004,
        init_std=0.1,
        cfg=V2_SMALL,
        fp8=None,
        mtp=False,
        desc="DeepSeek-V2-Lite tiny: q_lora_rank null (q_proj), YaRN x4 (mscale 0.707/0.707), "
        "1 dense + 2 MoE layers (8 experts, 2 shared, top-3 softmax greedy, no norm, x1.0), "
        "randomized norms, bf16 weights",
    ),
    "v2_group": dict(
        arch="v2",
        seed=5005,
        init_std=0.1,
        cfg=dict(
            V2_SMALL,
            q_lora_rank=48,
            topk_method="group_limited_greedy",
            n_routed_experts=16,
            n_group=4,
            topk_group=2,
            num_experts_per_tok=3,
            routed_scaling_factor=16.0,
            norm_topk_prob=False,
            n_shared_experts=2,
        ),
        fp8=None,
        mtp=False,
        desc="DeepSeek-V2 tiny: MLA q_lora 48, group_limited_greedy (16 experts, 4 groups, top-2 "
        "groups by max, top-3 softmax, no norm, x16.0), 2 shared experts, YaRN x4 (0.707/0.707), "
        "randomized norms, bf16 weights",
    ),
}

ARCH = {
    "v3": (DeepseekV3Config, DeepseekV3ForCausalLM),
    "v2": (DeepseekV2Config, DeepseekV2ForCausalLM),
}

FUSED_GATE_UP = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.gate_up_proj$")
FUSED_DOWN = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.down_proj$")
PER_EXPERT = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
FP8_LINEAR = re.compile(
    r"\.(self_attn\.(q_proj|q_a_proj|q_b_proj|kv_a_proj_with_mqa|kv_b_proj|o_proj)"
    r"|mlp\.(experts\.\d+\.|shared_experts\.)?(gate_proj|up_proj|down_proj))\.weight$"
)


def is_norm(name: str) -> bool:
    return name.endswith("norm.weight")  # layernorm / q_a_layernorm / enorm / hnorm / norm


# ---------------------------------------------------------------------------------------------
# FP8 block quantization (DeepSeek style)
# ---------------------------------------------------------------------------------------------
def fp8_quantize(w: torch.Tensor, ue8m0: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (q float8_e4m3fn [out,in], scale_inv float32 [ceil(out/128), ceil(in/128)]).

    Dequantization: W[i, j] = float(q[i, j]) * scale_inv[i // 128, j // 128].
    scale = amax(block) / 448, or for ue8m0 rounded up to a power of two.
    """
    assert w.dtype == torch.float32 and w.dim() == 2
    rows, cols = w.shape
    nr, nc = math.ceil(rows / FP8_BLOCK), math.ceil(cols / FP8_BLOCK)
    padded = torch.zeros(nr * FP8_BLOCK, nc * FP8_BLOCK, dtype=torch.float32)
    padded[:rows, :cols] = w
    amax = padded.view(nr, FP8_BLOCK, nc, FP8_BLOCK).abs().amax(dim=(1, 3))
    amax = amax.clamp(min=1e-12)  # an all-zero block would otherwise divide by zero
    scale = amax / FP8_MAX
    if ue8m0:
        scale = torch.exp2(torch.ceil(torch.log2(scale)))
    scale = scale.to(torch.float32).contiguous()
    full = scale.repeat_interleave(FP8_BLOCK, 0).repeat_interleave(FP8_BLOCK, 1)[:rows, :cols]
    q = (w / full).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).contiguous()
    return q, scale


def fp8_dequantize(q: torch.Tensor, scale_inv: torch.Tensor) -> torch.Tensor:
    """Independent, element-wise dequantizer (used for the golden model and the check)."""
    rows, cols = q.shape
    ii = torch.arange(rows) // FP8_BLOCK
    jj = torch.arange(cols) // FP8_BLOCK
    s = scale_inv.to(torch.float32)[ii][:, jj]
    return q.to(torch.float32) * s


# ---------------------------------------------------------------------------------------------
# model construction
# ---------------------------------------------------------------------------------------------
def build_config(spec: dict):
    cfg_cls, _ = ARCH[spec["arch"]]
    kwargs = copy.deepcopy(spec["cfg"])
    kwargs["initializer_range"] = spec["init_std"]
    config = cfg_cls(**kwargs)
    config.architectures = [ARCH[spec["arch"]][1].__name__]
    return config


def new_model(config, arch: str):
    _, model_cls = ARCH[arch]
    model = model_cls._from_config(
        config, attn_implementation="eager", experts_implementation="eager", dtype=torch.float32
    )
    model.eval()
    return model


def randomize(model, seed: int, std: float) -> None:
    """Overwrite every parameter / persistent buffer with seeded random values (independent of
    transformers' own init order): norms 1 + 0.3*randn, e_score_correction_bias 0.1*randn,
    everything else std*randn."""
    g = torch.Generator().manual_seed(seed)
    sd = model.state_dict()
    with torch.no_grad():
        for name in sorted(sd):
            t = sd[name]
            r = torch.randn(t.shape, generator=g, dtype=torch.float32)
            if is_norm(name):
                v = 1.0 + 0.3 * r
            elif name.endswith("e_score_correction_bias"):
                v = 0.1 * r
            else:
                v = std * r
            t.copy_(v)


def to_checkpoint(state: dict[str, torch.Tensor], fp8: str | None) -> dict[str, torch.Tensor]:
    """Model state dict (fp32, fused experts) -> real DeepSeek checkpoint tensors."""
    out: dict[str, torch.Tensor] = {}
    for name in sorted(state):
        t = state[name].detach().to(torch.float32)
        m_gu, m_d = FUSED_GATE_UP.match(name), FUSED_DOWN.match(name)
        if m_gu:
            n_exp, two_i, _ = t.shape
            inter = two_i // 2
            for e in range(n_exp):  # fused layout is [gate; up] along dim 1 (see README)
                out[f"{m_gu.group(1)}.{e}.gate_proj.weight"] = t[e, :inter].clone()
                out[f"{m_gu.group(1)}.{e}.up_proj.weight"] = t[e, inter:].clone()
        elif m_d:
            for e in range(t.shape[0]):
                out[f"{m_d.group(1)}.{e}.down_proj.weight"] = t[e].clone()
        else:
            out[name] = t.clone()

    final: dict[str, torch.Tensor] = {}
    for name, t in out.items():
        if name.endswith("e_score_correction_bias"):
            final[name] = t.to(torch.float32).contiguous()
        elif fp8 and FP8_LINEAR.search(name):
            q, s = fp8_quantize(t, ue8m0=(fp8 == "ue8m0"))
            final[name] = q
            final[name + "_scale_inv"] = s  # -> "...weight_scale_inv"
        else:
            final[name] = t.to(torch.bfloat16).contiguous()
    return final


def decode_checkpoint(ckpt: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Real checkpoint tensors -> fp32 tensors with the same (per-expert) names."""
    out = {}
    for name, t in ckpt.items():
        if name.endswith("_scale_inv"):
            continue
        if t.dtype == torch.float8_e4m3fn:
            out[name] = fp8_dequantize(t, ckpt[name + "_scale_inv"])
        else:
            out[name] = t.to(torch.float32)
    return out


def fuse_experts(dec: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-expert fp32 tensors -> model state dict layout (our own mapping, used for the golden
    forward; the verification uses transformers' mapping instead)."""
    out, groups = {}, {}
    for name, t in dec.items():
        m = PER_EXPERT.match(name)
        if m:
            groups.setdefault(m.group(1), {})[(int(m.group(2)), m.group(3))] = t
        else:
            out[name] = t
    for prefix, d in groups.items():
        n_exp = 1 + max(e for e, _ in d)
        out[f"{prefix}.gate_up_proj"] = torch.stack(
            [torch.cat([d[(e, "gate_proj")], d[(e, "up_proj")]], dim=0) for e in range(n_exp)]
        )
        out[f"{prefix}.down_proj"] = torch.stack([d[(e, "down_proj")] for e in range(n_exp)])
    return out


def mtp_tensors(ckpt: dict[str, torch.Tensor], cfg: dict, seed: int, std: float) -> dict[str, torch.Tensor]:
    """Random tensors for the V3 MTP module (layer index num_hidden_layers), real names/shapes.
    They do not influence the logits."""
    L = cfg["num_hidden_layers"]
    src = f"model.layers.{L - 1}."  # last main layer is a MoE layer: same tensor set
    assert L - 1 >= cfg["first_k_dense_replace"]
    g = torch.Generator().manual_seed(seed + 777)
    H = cfg["hidden_size"]
    out = {}
    for name in sorted(ckpt):
        if not name.startswith(src):
            continue
        new = f"model.layers.{L}." + name[len(src):]
        t = ckpt[name]
        r = torch.randn(t.shape, generator=g)
        if is_norm(name):
            v = 1.0 + 0.3 * r
        elif name.endswith("e_score_correction_bias"):
            v = 0.1 * r
        else:
            v = std * r
        out[new] = v.to(t.dtype).contiguous()
    p = f"model.layers.{L}."
    out[p + "enorm.weight"] = (1.0 + 0.3 * torch.randn(H, generator=g)).to(torch.bfloat16)
    out[p + "hnorm.weight"] = (1.0 + 0.3 * torch.randn(H, generator=g)).to(torch.bfloat16)
    out[p + "eh_proj.weight"] = (std * torch.randn(H, 2 * H, generator=g)).to(torch.bfloat16)
    out[p + "embed_tokens.weight"] = ckpt["model.embed_tokens.weight"].clone()
    out[p + "shared_head.norm.weight"] = (1.0 + 0.3 * torch.randn(H, generator=g)).to(torch.bfloat16)
    out[p + "shared_head.head.weight"] = ckpt["lm_head.weight"].clone()
    return out


# ---------------------------------------------------------------------------------------------
# routing margins: how far each token's expert / group choice is from a tie
# ---------------------------------------------------------------------------------------------
def router_margins(model, spec: dict, input_ids: torch.Tensor) -> dict:
    """Re-derives the HF routing decisions in float64 from the router inputs and returns the
    smallest gap (over tokens and MoE layers) between the last selected and the first rejected
    expert score, and likewise for groups. Small gaps would make the fixture fragile."""
    cfg = spec["cfg"]
    captured = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: captured.append((inp[0].detach(), out)))
             for n, m in model.named_modules() if n.endswith("mlp.gate")]
    with torch.no_grad():
        model(input_ids[None], use_cache=False)
    for h in hooks:
        h.remove()
    gates = [m for n, m in model.named_modules() if n.endswith("mlp.gate")]
    E, k = cfg["n_routed_experts"], cfg["num_experts_per_tok"]
    G, kg = cfg["n_group"], cfg["topk_group"]
    exp_gap, grp_gap, used = float("inf"), float("inf"), set()
    for (x, out), gate in zip(captured, gates):
        x = x.reshape(-1, x.shape[-1]).double()
        logits = x @ gate.weight.double().T
        hf_idx = out[2]
        if spec["arch"] == "v3":
            sc = logits.sigmoid() + gate.e_score_correction_bias.double()
            gs = sc.view(-1, G, E // G).topk(2, dim=-1)[0].sum(-1)
        else:
            sc = logits.softmax(-1)
            gs = sc.view(-1, G, E // G).max(-1).values
        use_groups = spec["arch"] == "v3" or cfg["topk_method"] == "group_limited_greedy"
        if use_groups and kg < G:
            gsorted = gs.sort(-1, descending=True).values
            grp_gap = min(grp_gap, (gsorted[:, kg - 1] - gsorted[:, kg]).min().item())
            gidx = gs.topk(kg, -1).indices
            gmask = torch.zeros_like(gs).scatter_(1, gidx, 1).bool()
            emask = gmask.unsqueeze(-1).expand(-1, G, E // G).reshape(-1, E)
            sc = sc.masked_fill(~emask, float("-inf"))
        ssorted = sc.sort(-1, descending=True).values
        exp_gap = min(exp_gap, (ssorted[:, k - 1] - ssorted[:, k]).min().item())
        idx64 = sc.topk(k, -1).indices
        assert torch.equal(idx64.sort(-1).values, hf_idx.sort(-1).values), "fp64 routing differs"
        used |= set(hf_idx.flatten().tolist())
    return {"expert_choice_min_gap": exp_gap,
            "group_choice_min_gap": None if grp_gap == float("inf") else grp_gap,
            "experts_used": len(used), "n_routed_experts": E, "moe_layers": len(captured)}


# ---------------------------------------------------------------------------------------------
# config.json
# ---------------------------------------------------------------------------------------------
REQUIRED_COMMON = [
    "model_type", "architectures", "vocab_size", "hidden_size", "intermediate_size",
    "moe_intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
    "n_routed_experts", "n_shared_experts", "num_experts_per_tok", "n_group", "topk_group",
    "topk_method", "scoring_func", "norm_topk_prob", "routed_scaling_factor",
    "first_k_dense_replace", "moe_layer_freq", "rms_norm_eps", "max_position_embeddings",
    "tie_word_embeddings", "rope_theta", "rope_scaling", "hidden_act",
]


def write_config(config, spec: dict, path: Path) -> dict:
    with tempfile.TemporaryDirectory() as td:
        config.save_pretrained(td)
        d = json.loads((Path(td) / "config.json").read_text())
    cfg = spec["cfg"]
    # transformers v5 folds rope_scaling + rope_theta into `rope_parameters`; real DeepSeek
    # checkpoints use the classic keys, so write those too (transformers accepts both).
    d["rope_scaling"] = {k: cfg["rope_scaling"][k] for k in
                         ["type", "factor", "original_max_position_embeddings", "beta_fast",
                          "beta_slow", "mscale", "mscale_all_dim"]}
    d["rope_theta"] = cfg["rope_theta"]
    # the in-memory model is fp32, but the stored tensors are bf16 (or fp8), as in real checkpoints
    d.pop("dtype", None)
    d["torch_dtype"] = "bfloat16"
    for k in ["q_lora_rank", "topk_method", "scoring_func", "n_group", "topk_group",
              "norm_topk_prob", "routed_scaling_factor", "first_k_dense_replace", "moe_layer_freq"]:
        if k not in d:
            d[k] = cfg[k]
        assert d[k] == cfg[k], (k, d[k], cfg[k])
    if spec["arch"] == "v3":
        d.setdefault("num_nextn_predict_layers", cfg["num_nextn_predict_layers"])
        assert d["num_nextn_predict_layers"] == cfg["num_nextn_predict_layers"]
    if spec["fp8"]:
        q = dict(FP8_QCFG)
        if spec["fp8"] == "ue8m0":
            q["scale_fmt"] = "ue8m0"
        d["quantization_config"] = q
    for k in REQUIRED_COMMON:
        assert k in d, f"config.json lacks {k}"
    path.write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")
    return d


# ---------------------------------------------------------------------------------------------
# verification: reload the written files through transformers' own loader
# ---------------------------------------------------------------------------------------------
def reload_logits(fixture_dir: Path, spec: dict, input_ids: torch.Tensor) -> tuple[torch.Tensor, dict]:
    _, model_cls = ARCH[spec["arch"]]
    with tempfile.TemporaryDirectory() as td:
        src = fixture_dir
        if spec["fp8"]:
            # transformers' FP8 dequantize-on-load rejects partial edge blocks (it derives the block
            # size as rows // scale_rows), so dequantize here (q * scale_inv, fp32) and hand
            # transformers a plain per-expert-named fp32 checkpoint with the same config sans
            # quantization_config.
            tdp = Path(td)
            d = json.loads((fixture_dir / "config.json").read_text())
            d.pop("quantization_config")
            (tdp / "config.json").write_text(json.dumps(d))
            ck = {}
            with safe_open(fixture_dir / "model.safetensors", "pt") as f:
                for k in f.keys():
                    ck[k] = f.get_tensor(k)
            save_file(decode_checkpoint(ck), str(tdp / "model.safetensors"), metadata={"format": "pt"})
            src = tdp
        model, info = model_cls.from_pretrained(
            src,
            dtype=torch.float32,
            attn_implementation="eager",
            experts_implementation="eager",
            output_loading_info=True,
        )
        model.eval()
        with torch.no_grad():
            logits = model(input_ids[None], use_cache=False).logits[0]
    return logits, info, model


def make_fixture(name: str, spec: dict, out_root: Path) -> dict:
    torch.manual_seed(spec["seed"])
    config = build_config(spec)
    model = new_model(config, spec["arch"])
    randomize(model, spec["seed"], spec["init_std"])

    ckpt = to_checkpoint(model.state_dict(), spec["fp8"])
    # golden model: parameters are exactly what the checkpoint decodes to
    golden_state = fuse_experts(decode_checkpoint(ckpt))
    model.load_state_dict(golden_state, strict=True)
    if spec["mtp"]:
        extra = mtp_tensors(ckpt, spec["cfg"], spec["seed"], spec["init_std"])
        assert not (set(extra) & set(ckpt))
        ckpt.update(extra)

    g = torch.Generator().manual_seed(spec["seed"] + 1)
    input_ids = torch.randint(0, spec["cfg"]["vocab_size"], (N_TOKENS,), generator=g)
    with torch.no_grad():
        logits = model(input_ids[None], use_cache=False).logits[0].to(torch.float32).contiguous()
    assert logits.shape == (N_TOKENS, spec["cfg"]["vocab_size"])
    assert torch.isfinite(logits).all()
    margins = router_margins(model, spec, input_ids)

    d = out_root / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    write_config(config, spec, d / "config.json")
    save_file({k: ckpt[k] for k in sorted(ckpt)}, str(d / "model.safetensors"), metadata={"format": "pt"})
    (d / "input_ids.json").write_text(json.dumps({"input_ids": input_ids.tolist()}) + "\n")
    np.ascontiguousarray(logits.numpy(), dtype="<f4").tofile(d / "logits.f32")

    # ---- verification -------------------------------------------------------------------
    re_logits, info, re_model = reload_logits(d, spec, input_ids)
    assert not info["missing_keys"], info["missing_keys"]
    L = spec["cfg"]["num_hidden_layers"]
    unexpected = sorted(info["unexpected_keys"])
    assert all(k.startswith(f"model.layers.{L}.") for k in unexpected), unexpected
    if spec["mtp"]:
        assert unexpected, "MTP tensors should be reported unexpected by transformers"
    # fused-layout cross check ([gate; up]) against what transformers built from per-expert names
    first_moe = spec["cfg"]["first_k_dense_replace"]
    inter = spec["cfg"]["moe_intermediate_size"]
    exp = re_model.model.layers[first_moe].mlp.experts
    dec = decode_checkpoint(ckpt)
    for e in (0, spec["cfg"]["n_routed_experts"] - 1):
        p = f"model.layers.{first_moe}.mlp.experts.{e}."
        assert torch.equal(exp.gate_up_proj[e, :inter], dec[p + "gate_proj.weight"])
        assert torch.equal(exp.gate_up_proj[e, inter:], dec[p + "up_proj.weight"])
        assert torch.equal(exp.down_proj[e], dec[p + "down_proj.weight"])
    # naming cross check: transformers' own save_pretrained (which un-fuses experts on save) must
    # produce exactly our tensor names (minus MTP extras and FP8 scales) and the same fp32 values
    with tempfile.TemporaryDirectory() as td:
        re_model.save_pretrained(td)
        with safe_open(Path(td) / "model.safetensors", "pt") as f:
            hf_keys = set(f.keys())
            ours = {k for k in ckpt if not k.endswith("_scale_inv") and not k.startswith(f"model.layers.{L}.")}
            assert hf_keys == ours, sorted(hf_keys ^ ours)
            for k in hf_keys:
                assert torch.equal(f.get_tensor(k).to(torch.float32), dec[k]), k
    file_logits = torch.from_numpy(np.fromfile(d / "logits.f32", dtype="<f4")).view(N_TOKENS, -1)
    reload_diff = (re_logits - file_logits).abs().max().item()

    lg = logits.numpy()
    meta = {
        "name": name,
        "description": spec["desc"],
        "model_class": ARCH[spec["arch"]][1].__name__,
        "n_tokens": N_TOKENS,
        "vocab_size": spec["cfg"]["vocab_size"],
        "logits_file": "logits.f32",
        "logits_layout": "little-endian float32, row-major [n_tokens, vocab_size], all positions",
        "weights_dtype": ("float8_e4m3fn + float32 weight_scale_inv (128x128 blocks"
                          + (", power-of-two ue8m0" if spec["fp8"] == "ue8m0" else ", amax/448")
                          + "); embeddings/lm_head/norms/router bf16; e_score_correction_bias float32")
        if spec["fp8"] else "bfloat16 (e_score_correction_bias float32)",
        "golden_compute": "fp32 eager forward of the full sequence, no KV cache; weights = exact "
                          "decoded checkpoint values",
        "seed": spec["seed"],
        "init_std": spec["init_std"],
        "mtp_tensors": bool(spec["mtp"]),
        "max_abs_logit": float(np.abs(lg).max()),
        "logit_std": float(lg.std()),
        "reload_max_abs_diff": reload_diff,
        "routing": margins,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
    }
    (d / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    assert reload_diff == 0.0, f"{name}: reloaded logits differ by {reload_diff}"

    size = sum(f.stat().st_size for f in d.iterdir())
    print(f"[{name}] tensors={len(ckpt)} bytes={size} max|logit|={meta['max_abs_logit']:.4f} "
          f"std={meta['logit_std']:.4f} row-range(mean)={float((lg.max(1) - lg.min(1)).mean()):.4f} "
          f"reload_max_abs_diff={reload_diff} unexpected_on_reload={len(unexpected)} routing={margins}")
    return meta


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "tests" / "fixtures"))
    ap.add_argument("--only", nargs="*", default=None, choices=sorted(FIXTURES))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # fixed reduction order
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, out={out}")
    for name in args.only or FIXTURES:
        make_fixture(name, FIXTURES[name], out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
