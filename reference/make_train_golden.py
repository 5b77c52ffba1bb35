#!/usr/bin/env python3
"""Training golden for whale: a tiny DeepSeek-V3 (with one MTP module) trained for 10 AdamW steps.

The C++ trainer implements exactly the objective below. This script computes the same thing in
float64 with transformers' native `DeepseekV3ForCausalLM` / `DeepseekV3DecoderLayer` and writes
the initial checkpoint, the step-0 gradients and the state after 10 steps.

Objective, for a batch tokens[B, T+1] (x = tokens[:, :T], y = tokens[:, 1:]):
  L_main  mean cross-entropy of transformers' forward of x against y (B*T positions).
  L_MTP   (lambda/D) * sum_k L_k, here D = 1: with h0 = the last main decoder layer's output
          (BEFORE model.norm), for i = 0..T-2
            h'_i = eh_proj(cat[enorm(Emb(tokens[:, i+1])), hnorm(h0_i)])   (embedding first)
            h1   = decoder layer 2 (causal over the T-1 positions, rope positions 0..T-2)
            L_1  = mean CE(lm_head(shared_head.norm(h1)), tokens[:, i+2]).
          The MTP module shares the main embedding and lm_head.
  L_bal   sum over MoE layers (main layer 1 and MTP layer 2) of the mean over the B sequences of
          alpha * sum_i f_i * P_i with s = sigmoid(router logits), f_i = N/(K*T_b) * #{t: i picked},
          P_i = mean_t s_{i,t} / sum_j s_{j,t}.
  L_total = L_main + L_MTP + L_bal.
Each step: backward of L_total, global-norm clip to 1.0, torch.optim.AdamW (decay only on >= 2-D
tensors), then the loss-free balancing update bias_i += gamma * sign(mean_j c_j - c_i).

Precision. transformers 5.24 computes RMSNorm, the router logits and the attention softmax in
float32 even when the model is float64. For the golden these three are replaced by versions that
compute in max(input dtype, float32): identical code and bit-identical results in float32 (checked
on every run), full float64 precision here. The rotary cos/sin stay transformers' float32 values
(they do not depend on any parameter).

Seeds. The float32 C++ trainer must route every token exactly as this float64 run does. Seed pairs
(init, data) are tried in order until (a) over all 10 steps every routing gap (k-th vs (k+1)-th
eligible biased expert score, last kept vs first dropped group score) is >= 1e-4, and (b) a
float32 replay (the same recipe with transformers' own float32 numerics) picks the same experts
at every step. The replay's distance from the golden is recorded as a guide for tolerances.

Checks before writing: finite losses that fall over the 10 steps; patched == transformers in
float32; hidden_states[-1] is post-norm; a hand-rolled decoder loop (as used for the MTP layer)
reproduces transformers' forward; central finite differences of every loss term on parameters
all over the model (incl. MTP, router and the balance loss via the router input). After writing:
from_pretrained reloads the checkpoint and reproduces the step-0 losses exactly.

Usage:  python reference/make_train_golden.py [--out tests/fixtures/train_tiny]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch
import torch.nn.functional as F
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import DeepseekV3ForCausalLM
from transformers.models.deepseek_v3 import modeling_deepseek_v3 as mdv3

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402  (config writer, expert-name regexes, model constructor)

# ---------------------------------------------------------------------------------------------
# model and training settings
# ---------------------------------------------------------------------------------------------
YARN = {
    "type": "yarn",
    "factor": 2.0,
    "original_max_position_embeddings": 16,
    "beta_fast": 32,
    "beta_slow": 1,
    "mscale": 1.0,
    "mscale_all_dim": 1.0,
}

CFG = dict(
    vocab_size=256,
    hidden_size=64,
    num_hidden_layers=2,
    first_k_dense_replace=1,
    moe_layer_freq=1,
    intermediate_size=128,
    moe_intermediate_size=32,
    n_routed_experts=8,
    num_experts_per_tok=2,
    n_shared_experts=1,
    n_group=4,
    topk_group=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    q_lora_rank=32,
    kv_lora_rank=32,
    qk_nope_head_dim=16,
    qk_rope_head_dim=8,
    v_head_dim=16,
    routed_scaling_factor=2.5,
    norm_topk_prob=True,
    scoring_func="sigmoid",
    topk_method="noaux_tc",
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    rope_scaling=YARN,
    max_position_embeddings=64,
    num_nextn_predict_layers=1,
    tie_word_embeddings=False,
    hidden_act="silu",
    bos_token_id=0,
    eos_token_id=1,
)
INIT_STD = 0.02

B, T = 2, 16  # batch: tokens [B, T+1]
LR_PEAK, LR_MIN, WARMUP, TOTAL = 1e-2, 1e-3, 3, 10
BETAS, ADAM_EPS, WEIGHT_DECAY, CLIP = (0.9, 0.95), 1e-8, 0.1, 1.0
MTP_LAMBDA = 0.3  # lambda; L_MTP = lambda / D * sum_k L_k
BAL_ALPHA = 0.01  # sequence-wise balance loss weight
BIAS_GAMMA = 0.01  # loss-free balancing bias update speed

MARGIN_MIN = 1e-4  # smallest routing gap (expert or group) tolerated over the 10 steps
FIRST_INIT_SEED, FIRST_DATA_SEED, MAX_TRIES = 1000, 2000, 200

MTP_LAYER = CFG["num_hidden_layers"]  # the MTP module is stored as model.layers.{MTP_LAYER}.*
MTP_PREFIX = f"model.layers.{MTP_LAYER}."
MOE_LAYERS = [str(i) for i in range(CFG["first_k_dense_replace"], CFG["num_hidden_layers"] + 1)]
WEIGHTS_AFTER = [  # small representative tensors stored after the 10 steps
    "model.layers.0.input_layernorm.weight",
    "model.layers.1.mlp.gate.weight",
    "model.layers.1.mlp.experts.0.down_proj.weight",
    "model.layers.2.eh_proj.weight",
    "model.layers.2.enorm.weight",
    "model.layers.2.mlp.gate.weight",
    "model.layers.2.shared_head.norm.weight",
    "model.norm.weight",
]

SPEC = dict(arch="v3", cfg=CFG, init_std=INIT_STD, fp8=None, mtp=True)  # make_fixtures' spec shape


def lr_at(step: int) -> float:
    """Linear warmup to the peak, then cosine decay to LR_MIN at step TOTAL."""
    if step < WARMUP:
        return LR_PEAK * (step + 1) / WARMUP
    progress = (step - WARMUP) / max(1, TOTAL - WARMUP)
    return LR_MIN + 0.5 * (LR_PEAK - LR_MIN) * (1.0 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------------------
# float64-exact versions of transformers' float32 islands (see module docstring)
# ---------------------------------------------------------------------------------------------
def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for float32/bf16/fp16 inputs (as transformers does), float64 for float64."""
    return torch.promote_types(dtype, torch.float32)


def _rmsnorm_forward(self, hidden_states):
    input_dtype = hidden_states.dtype
    hidden_states = hidden_states.to(_compute_dtype(input_dtype))
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
    return self.weight * hidden_states.to(input_dtype)


def _router_forward(self, hidden_states):
    # Same algorithm as DeepseekV3TopkRouter.forward in transformers 5.24; only the compute dtype
    # of the router logits differs (float32 there, max(input, float32) here).
    hidden_states = hidden_states.view(-1, self.hidden_dim)
    dt = _compute_dtype(hidden_states.dtype)
    router_logits = F.linear(hidden_states.type(dt), self.weight.type(dt))
    scores = router_logits.sigmoid()
    scores_for_choice = scores + self.e_score_correction_bias
    per_group = self.num_experts // self.num_group
    group_scores = scores_for_choice.view(-1, self.num_group, per_group).topk(2, dim=-1)[0].sum(dim=-1)
    group_idx = torch.topk(group_scores, k=self.topk_group, dim=-1, sorted=False)[1]
    group_mask = torch.zeros_like(group_scores)
    group_mask.scatter_(1, group_idx, 1)
    score_mask = group_mask.unsqueeze(-1).expand(-1, self.num_group, per_group).reshape(-1, self.num_experts)
    scores_for_choice = scores_for_choice.masked_fill(~score_mask.bool(), float("-inf"))
    topk_indices = torch.topk(scores_for_choice, k=self.top_k, dim=-1, sorted=False)[1]
    topk_weights = scores.gather(1, topk_indices)
    if self.norm_topk_prob:
        denominator = topk_weights.sum(dim=-1, keepdim=True) + 1e-20
        topk_weights /= denominator
    topk_weights = topk_weights * self.routed_scaling_factor
    return router_logits, topk_weights, topk_indices


def _eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    # transformers' eager_attention_forward with the softmax in max(query dtype, float32)
    key_states = mdv3.repeat_kv(key, module.num_key_value_groups)
    value_states = mdv3.repeat_kv(value, module.num_key_value_groups)
    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=_compute_dtype(query.dtype)).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value_states)
    return attn_output.transpose(1, 2).contiguous(), attn_weights


PATCHES = [
    (mdv3.DeepseekV3RMSNorm, "forward", _rmsnorm_forward),
    (mdv3.DeepseekV3TopkRouter, "forward", _router_forward),
    (mdv3, "eager_attention_forward", _eager_attention_forward),
]
ORIGINALS = [(owner, attr, getattr(owner, attr)) for owner, attr, _ in PATCHES]


def set_precise(on: bool) -> None:
    for (owner, attr, new), (_, _, old) in zip(PATCHES, ORIGINALS):
        setattr(owner, attr, new if on else old)


# ---------------------------------------------------------------------------------------------
# model: transformers' main model + one MTP module
# ---------------------------------------------------------------------------------------------
class MTPModule(nn.Module):
    """DeepSeek-V3 multi-token-prediction module (one depth). Its tensors are stored under
    `model.layers.{MTP_LAYER}.`: enorm, hnorm, eh_proj and shared_head.norm by their own names,
    and the decoder layer `layer.X` as plain `X` (self_attn.*, mlp.*, input_layernorm, ...).
    The embedding and the output head are the main model's (shared, not parameters here)."""

    def __init__(self, config):
        super().__init__()
        h = config.hidden_size
        self.enorm = mdv3.DeepseekV3RMSNorm(h, eps=config.rms_norm_eps)
        self.hnorm = mdv3.DeepseekV3RMSNorm(h, eps=config.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * h, h, bias=False)
        self.layer = mdv3.DeepseekV3DecoderLayer(config, layer_idx=MTP_LAYER)
        self.shared_head = nn.Module()
        self.shared_head.norm = mdv3.DeepseekV3RMSNorm(h, eps=config.rms_norm_eps)


def mtp_name(local: str) -> str:
    return MTP_PREFIX + local.removeprefix("layer.")


def named_state(model, mtp) -> dict[str, torch.Tensor]:
    """Every parameter and persistent buffer, HF names (experts still fused)."""
    out = dict(model.state_dict())
    out.update({mtp_name(k): v for k, v in mtp.state_dict().items()})
    return out


def trainable(model, mtp) -> dict[str, nn.Parameter]:
    """All trainable parameters by HF name (experts fused); e_score_correction_bias is a buffer."""
    out = dict(model.named_parameters())
    out.update({mtp_name(k): p for k, p in mtp.named_parameters()})
    return {k: out[k] for k in sorted(out)}


def split_experts(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fused expert tensors -> real per-expert DeepSeek names; everything becomes float32.
    transformers' fused layout: gate_up_proj[E, 2I, H] = [gate; up] along dim 1, down_proj[E, H, I]."""
    out = {}
    for name in sorted(state):
        t = state[name].detach().to(torch.float32)
        m_gu, m_d = mf.FUSED_GATE_UP.match(name), mf.FUSED_DOWN.match(name)
        if m_gu:
            inter = t.shape[1] // 2
            for e in range(t.shape[0]):
                out[f"{m_gu.group(1)}.{e}.gate_proj.weight"] = t[e, :inter].clone()
                out[f"{m_gu.group(1)}.{e}.up_proj.weight"] = t[e, inter:].clone()
        elif m_d:
            for e in range(t.shape[0]):
                out[f"{m_d.group(1)}.{e}.down_proj.weight"] = t[e].clone()
        else:
            out[name] = t.clone().contiguous()
    return out


def init_weights(model, mtp, seed: int) -> None:
    """Seeded float32 init in sorted-name order: norms 1, correction bias 0, all else N(0, 0.02^2)."""
    g = torch.Generator().manual_seed(seed)
    state = named_state(model, mtp)
    with torch.no_grad():
        for name in sorted(state):
            t = state[name]
            if mf.is_norm(name):
                t.fill_(1.0)
            elif name.endswith("e_score_correction_bias"):
                t.zero_()
            else:
                t.copy_(INIT_STD * torch.randn(t.shape, generator=g, dtype=torch.float32))


def build(init_seed: int, data_seed: int, dtype: torch.dtype = torch.float64):
    """Fresh float32-initialised model (+ its checkpoint tensors), then switched to `dtype`."""
    config = mf.build_config(dict(SPEC, init_std=INIT_STD))
    model = mf.new_model(config, "v3")  # eager attention + eager experts
    mtp = MTPModule(model.config)
    init_weights(model, mtp, init_seed)
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    ckpt = split_experts(named_state(model, mtp))
    # HF layout: the MTP module carries its own copies of the (shared) embedding and head
    ckpt[MTP_PREFIX + "embed_tokens.weight"] = ckpt["model.embed_tokens.weight"].clone()
    ckpt[MTP_PREFIX + "shared_head.head.weight"] = ckpt["lm_head.weight"].clone()
    model.to(dtype).train()
    mtp.to(dtype).train()
    g = torch.Generator().manual_seed(data_seed)
    tokens = torch.randint(0, CFG["vocab_size"], (B, T + 1), generator=g)
    return config, model, mtp, ckpt, tokens


# ---------------------------------------------------------------------------------------------
# forward: the three losses
# ---------------------------------------------------------------------------------------------
class Taps:
    """Forward hooks: the last main decoder layer's output (pre-norm h0) and, for every MoE
    router, its input (in the autograd graph) and the experts it picked."""

    def __init__(self, model, mtp):
        self.gates = {str(i): model.model.layers[i].mlp.gate for i in range(len(model.model.layers))
                      if isinstance(model.model.layers[i].mlp, mdv3.DeepseekV3MoE)}
        self.gates[str(MTP_LAYER)] = mtp.layer.mlp.gate
        assert list(self.gates) == MOE_LAYERS
        self.router: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.h0 = None
        model.model.layers[-1].register_forward_hook(self._last_layer)
        for key, gate in self.gates.items():
            gate.register_forward_hook(lambda mod, inp, out, key=key: self._gate(key, inp, out))

    def _last_layer(self, mod, inp, out):
        self.h0 = out

    def _gate(self, key, inp, out):
        assert key not in self.router, "router called twice in one forward"
        self.router[key] = (inp[0], out[2].detach())  # (router input [B, T_b, H], picks [B*T_b, K])

    def clear(self):
        self.router, self.h0 = {}, None


def causal_mask(n: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive [1, 1, n, n] mask for transformers' eager attention: 0 where key <= query."""
    m = torch.full((n, n), torch.finfo(dtype).min, dtype=dtype).triu(1)
    return m[None, None]


def balance_loss(x_in: torch.Tensor, picks: torch.Tensor, gate) -> torch.Tensor:
    """Sequence-wise balance loss of one MoE layer, averaged over the batch. The scores are
    recomputed from the router input, so the gradient reaches the gate weight AND the input."""
    n_exp, k = gate.num_experts, gate.top_k
    b, t_b = x_in.shape[0], x_in.shape[1]
    s = torch.sigmoid(F.linear(x_in.to(_compute_dtype(x_in.dtype)), gate.weight))  # [B, T_b, N]
    p = (s / s.sum(-1, keepdim=True)).mean(1)  # P_i per sequence [B, N]
    counts = F.one_hot(picks.view(b, t_b, k), n_exp).sum((1, 2)).to(s.dtype)  # [B, N], no grad
    f = n_exp / (k * t_b) * counts
    return BAL_ALPHA * (f * p).sum(-1).mean()


def forward_losses(model, mtp, taps: Taps, tokens: torch.Tensor) -> dict:
    """L_main, L_MTP (lambda-weighted; loss_mtp_modules = the unweighted L_k), L_bal, L_total."""
    taps.clear()
    vocab = model.config.vocab_size
    x, y = tokens[:, :T], tokens[:, 1:]
    logits = model(input_ids=x, use_cache=False).logits
    loss_main = F.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1))
    h0 = taps.h0  # [B, T, H], before model.norm

    # MTP depth 1 on positions i = 0..T-2: embedding of token i+1, hidden state h0_i, target i+2
    n = T - 1
    emb = model.model.embed_tokens(tokens[:, 1:T])
    h = mtp.eh_proj(torch.cat([mtp.enorm(emb), mtp.hnorm(h0[:, :n])], dim=-1))
    pos = torch.arange(n)[None]
    cos_sin = model.model.rotary_emb(h, pos)
    h = mtp.layer(h, attention_mask=causal_mask(n, h.dtype), position_ids=pos, position_embeddings=cos_sin)
    logits_mtp = model.lm_head(mtp.shared_head.norm(h))
    loss_mtp_1 = F.cross_entropy(logits_mtp.reshape(-1, vocab), tokens[:, 2:T + 1].reshape(-1))
    modules = [loss_mtp_1]
    loss_mtp = MTP_LAMBDA / len(modules) * sum(modules)

    loss_bal = sum(balance_loss(*taps.router[key], taps.gates[key]) for key in MOE_LAYERS)
    return dict(loss_total=loss_main + loss_mtp + loss_bal, loss_main=loss_main, loss_mtp=loss_mtp,
                loss_bal=loss_bal, loss_mtp_modules=modules)


def routing_stats(taps: Taps, check: bool = True) -> tuple[float, dict[str, list[int]]]:
    """Smallest routing gap (expert: k-th vs (k+1)-th eligible biased score; group: last kept vs
    first dropped group score) over all MoE tokens, recomputed independently in float64, plus
    the per-expert token counts of this forward. Asserts (if `check`) that the recomputed picks
    equal HF's."""
    margin, counts = float("inf"), {}
    with torch.no_grad():
        for key in MOE_LAYERS:
            x_in, picks = taps.router[key]
            gate = taps.gates[key]
            n_exp, k, n_grp, k_grp = gate.num_experts, gate.top_k, gate.num_group, gate.topk_group
            xx = x_in.reshape(-1, x_in.shape[-1]).double()
            biased = (xx @ gate.weight.double().T).sigmoid() + gate.e_score_correction_bias.double()
            grp = biased.view(-1, n_grp, n_exp // n_grp).topk(2, dim=-1).values.sum(-1)
            gsort = grp.sort(-1, descending=True).values
            margin = min(margin, (gsort[:, k_grp - 1] - gsort[:, k_grp]).min().item())
            keep = torch.zeros_like(grp, dtype=torch.bool).scatter_(1, grp.topk(k_grp, -1).indices, True)
            eligible = biased.masked_fill(~keep.repeat_interleave(n_exp // n_grp, dim=1), float("-inf"))
            esort = eligible.sort(-1, descending=True).values
            margin = min(margin, (esort[:, k - 1] - esort[:, k]).min().item())
            ours = eligible.topk(k, -1).indices.sort(-1).values
            assert not check or torch.equal(ours, picks.sort(-1).values), f"layer {key}: routing differs"
            counts[key] = torch.bincount(picks.flatten(), minlength=n_exp).tolist()
    return margin, counts


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
def train(init_seed: int, data_seed: int, stop_below: float | None,
          dtype: torch.dtype = torch.float64) -> dict | None:
    """10 steps on one batch. Returns None as soon as a routing gap < stop_below is seen.
    dtype float32 is the 'float32 replay' (transformers' own float32 numerics) used to check
    that a float32 trainer makes the same routing decisions."""
    config, model, mtp, ckpt, tokens = build(init_seed, data_seed, dtype)
    taps = Taps(model, mtp)
    params = trainable(model, mtp)
    decay = [p for p in params.values() if p.dim() >= 2]
    no_decay = [p for p in params.values() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}],
        lr=LR_PEAK, betas=BETAS, eps=ADAM_EPS, foreach=False,
    )
    steps, picks, grads0, step0, counts0, min_margin = [], [], None, None, None, float("inf")
    for step in range(TOTAL):
        lr = lr_at(step)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        out = forward_losses(model, mtp, taps, tokens)
        margin, counts = routing_stats(taps, check=dtype == torch.float64)
        picks.append({k: v[1].clone() for k, v in taps.router.items()})
        min_margin = min(min_margin, margin)
        if stop_below is not None and min_margin < stop_below:
            return None
        out["loss_total"].backward()
        grads = {name: p.grad for name, p in params.items()}
        assert all(g is not None for g in grads.values()), "a parameter got no gradient"
        grad_norm = torch.sqrt(sum(g.pow(2).sum() for g in grads.values())).item()
        if step == 0:
            grads0 = {k: v.detach().clone() for k, v in grads.items()}
            counts0 = counts
            step0 = dict(loss_main=out["loss_main"].item(), loss_mtp=out["loss_mtp"].item(),
                         loss_mtp_modules=[v.item() for v in out["loss_mtp_modules"]],
                         loss_bal=out["loss_bal"].item(), loss_total=out["loss_total"].item(),
                         grad_norm=grad_norm)
        coef = CLIP / (grad_norm + 1e-6)  # as torch.nn.utils.clip_grad_norm_
        if coef < 1.0:
            for g in grads.values():
                g.mul_(coef)
        opt.step()
        with torch.no_grad():  # loss-free balancing, from this step's (pre-update) routing
            for key in MOE_LAYERS:
                bias = taps.gates[key].e_score_correction_bias
                c = torch.tensor(counts[key], dtype=bias.dtype)
                bias.add_(BIAS_GAMMA * torch.sign(c.mean() - c))
        steps.append(dict(step=step, lr=lr, loss_total=out["loss_total"].item(),
                          loss_main=out["loss_main"].item(), loss_mtp=out["loss_mtp"].item(),
                          loss_bal=out["loss_bal"].item(), grad_norm=grad_norm, clipped=coef < 1.0,
                          min_routing_margin=margin, expert_counts=counts))
    return dict(config=config, model=model, mtp=mtp, ckpt=ckpt, tokens=tokens, grads0=grads0,
                step0=step0, steps=steps, counts0=counts0, min_margin=min_margin, picks=picks)


def same_routing(a: dict, b: dict) -> bool:
    """Did two runs pick the same expert sets for every token, layer and step?"""
    return all(torch.equal(pa[k].sort(-1).values, pb[k].sort(-1).values)
               for pa, pb in zip(a["picks"], b["picks"]) for k in MOE_LAYERS)


def weights_after_names(steps: list[dict]) -> list[str]:
    """WEIGHTS_AFTER plus, per MoE layer, the down_proj of the expert that received no token in
    the most steps (if any): its AdamW update still runs (zero gradient, moments, weight decay)."""
    names = list(WEIGHTS_AFTER)
    for key in MOE_LAYERS:
        idle = [sum(s["expert_counts"][key][e] == 0 for s in steps) for e in range(CFG["n_routed_experts"])]
        e = max(range(len(idle)), key=lambda i: (idle[i], -i))
        if idle[e]:
            names.append(f"model.layers.{key}.mlp.experts.{e}.down_proj.weight")
    return names


def float32_replay_diffs(run64: dict, run32: dict, weights_after: list[str]) -> dict:
    """How far transformers' own float32 numerics land from the float64 golden (a guide for the
    C++ tolerances). Gradients / weights: max |a - b| / max |b| per tensor, worst tensor."""
    def rel(a, b):
        return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()

    g64, g32 = split_experts(run64["grads0"]), split_experts(run32["grads0"])
    w64 = split_experts(named_state(run64["model"], run64["mtp"]))
    w32 = split_experts(named_state(run32["model"], run32["mtp"]))
    keys = ["loss_total", "loss_main", "loss_mtp", "loss_bal", "grad_norm"]
    return {
        "same_routing_all_steps": same_routing(run64, run32),
        "max_abs_diff_per_step": {k: max(abs(a[k] - b[k]) for a, b in zip(run64["steps"], run32["steps"]))
                                  for k in keys},
        "grad_step0_max_rel_diff": max(rel(g32[k], g64[k]) for k in g64),
        "weights_after_max_rel_diff": max(rel(w32[k], w64[k]) for k in w64
                                          if not k.endswith("e_score_correction_bias")),
        "bias_after_max_abs_diff": max((w32[k].double() - w64[k].double()).abs().max().item()
                                       for k in w64 if k.endswith("e_score_correction_bias")),
        "weights_after_max_abs_diff": {k: (w32[k].double() - w64[k].double()).abs().max().item()
                                       for k in weights_after},
        "all_weights_after_max_abs_diff": max((w32[k].double() - w64[k].double()).abs().max().item()
                                              for k in w64),
    }


# ---------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------
def check_precise_patches(init_seed: int, data_seed: int) -> float:
    """The float64 patches must be bit-identical to transformers in float32, and close in
    float64. Returns max |logit| difference of original vs patched code in float64."""
    _, model, mtp, _, tokens = build(init_seed, data_seed)
    x = tokens[:, :T]
    res = {}
    for dtype in (torch.float32, torch.float64):
        model.to(dtype)
        for on in (False, True):
            set_precise(on)
            with torch.no_grad():
                res[dtype, on] = model(input_ids=x, use_cache=False).logits
    set_precise(True)
    assert torch.equal(res[torch.float32, False], res[torch.float32, True]), "patches change float32"
    diff64 = (res[torch.float64, False] - res[torch.float64, True]).abs().max().item()
    assert diff64 < 1e-4, diff64
    return diff64


def check_forward_structure(model, mtp, taps: Taps, tokens: torch.Tensor) -> dict:
    """hidden_states[-1] vs pre-norm h0, and that calling the decoder layers by hand (own causal
    mask, model.rotary_emb) reproduces transformers' forward: validates how the MTP layer is run."""
    x = tokens[:, :T]
    with torch.no_grad():
        taps.clear()
        out = model(input_ids=x, use_cache=False, output_hidden_states=True)
        h0 = taps.h0
        hs = out.hidden_states
        assert len(hs) == model.config.num_hidden_layers + 1
        last_is_normed = torch.equal(hs[-1], model.model.norm(h0))
        assert last_is_normed and not torch.allclose(hs[-1], h0)
        pos = torch.arange(T)[None]
        taps.clear()
        h = model.model.embed_tokens(x)
        cos_sin = model.model.rotary_emb(h, pos)
        for layer in model.model.layers:
            h = layer(h, attention_mask=causal_mask(T, h.dtype), position_ids=pos, position_embeddings=cos_sin)
        manual = (model.lm_head(model.model.norm(h)) - out.logits).abs().max().item()
        assert manual < 1e-12, manual
        # causality: changing the last input token must not change earlier logits
        x2 = x.clone()
        x2[:, -1] = (x2[:, -1] + 1) % model.config.vocab_size
        taps.clear()
        out2 = model(input_ids=x2, use_cache=False).logits
        assert torch.equal(out2[:, :-1], out.logits[:, :-1])
    return {"hidden_states_len": len(hs), "hidden_states_last_is_post_norm": last_is_normed,
            "manual_layer_loop_max_abs_diff": manual}


FD_PARAMS = [
    "lm_head.weight",
    "model.embed_tokens.weight",
    "model.layers.0.input_layernorm.weight",
    "model.layers.0.self_attn.q_a_proj.weight",
    "model.layers.0.mlp.down_proj.weight",
    "model.layers.1.self_attn.kv_b_proj.weight",
    "model.layers.1.mlp.gate.weight",
    "model.layers.1.mlp.experts.gate_up_proj",
    "model.layers.1.mlp.shared_experts.down_proj.weight",
    "model.norm.weight",
    "model.layers.2.enorm.weight",
    "model.layers.2.hnorm.weight",
    "model.layers.2.eh_proj.weight",
    "model.layers.2.self_attn.q_b_proj.weight",
    "model.layers.2.mlp.gate.weight",
    "model.layers.2.mlp.experts.down_proj",
    "model.layers.2.shared_head.norm.weight",
]
TERMS = ["loss_main", "loss_mtp", "loss_bal", "loss_total"]


def check_finite_differences(init_seed: int, data_seed: int, grads0: dict, h: float = 1e-4) -> dict:
    """Central differences in float64, per loss term, on the elements with the largest balance-loss
    and the largest total gradient of each FD_PARAMS tensor. Checks that autograd of each term
    (and of L_total) follows every path: MTP, shared embedding/head, router input and gate."""
    _, model, mtp, _, tokens = build(init_seed, data_seed)
    taps = Taps(model, mtp)
    params = trainable(model, mtp)
    plist = [params[n] for n in FD_PARAMS]
    out = forward_losses(model, mtp, taps, tokens)
    base_picks = {k: v[1].clone() for k, v in taps.router.items()}
    ad = {}
    for term in TERMS:
        gs = torch.autograd.grad(out[term], plist, retain_graph=True, allow_unused=True)
        ad[term] = [torch.zeros_like(p) if g is None else g for g, p in zip(gs, plist)]
    for name, g in zip(FD_PARAMS, ad["loss_total"]):
        assert torch.equal(g, grads0[name]), f"{name}: step-0 gradient not reproducible"

    worst, rows, bal_paths = 0.0, [], set()
    for i, (name, p) in enumerate(zip(FD_PARAMS, plist)):
        picks = {int(ad["loss_bal"][i].abs().argmax()), int(ad["loss_total"][i].abs().argmax())}
        for flat in sorted(picks):
            idx = tuple(int(v) for v in torch.unravel_index(torch.tensor(flat), p.shape))
            vals = {}
            for sign in (1, -1):
                with torch.no_grad():
                    orig = p[idx].item()
                    p[idx] = orig + sign * h
                    o = forward_losses(model, mtp, taps, tokens)
                    p[idx] = orig
                for k, v in taps.router.items():
                    assert torch.equal(v[1], base_picks[k]), "FD step changed the routing"
                vals[sign] = {t: o[t].item() for t in TERMS}
            for term in TERMS:
                fd = (vals[1][term] - vals[-1][term]) / (2 * h)
                a = ad[term][i][idx].item()
                err = abs(fd - a)
                tol = 1e-6 * abs(a) + 1e-10  # float64 rounding of the losses / (2h) is ~1e-11
                assert err <= tol, f"FD mismatch {name}{list(idx)} {term}: autograd {a} vs fd {fd}"
                worst = max(worst, err)
                if term == "loss_bal" and abs(a) > 1e-8:
                    bal_paths.add(name)
            rows.append({"param": name, "index": list(idx),
                         "autograd": {t: ad[t][i][idx].item() for t in TERMS}})
    # the balance loss must reach layer 0 through the router input (not only the gate weights)
    assert "model.layers.0.self_attn.q_a_proj.weight" in bal_paths, bal_paths
    assert "model.layers.2.eh_proj.weight" in bal_paths, bal_paths
    return {"h": h, "elements": len(rows), "max_abs_err": worst, "checked": rows}


def check_reload(out_dir: Path, tokens: torch.Tensor, step0: dict) -> dict:
    """Reload the written checkpoint: the main model through transformers' own from_pretrained
    (per-expert -> fused mapping), the MTP module from the same file by name; both step-0 losses
    must come out exactly as in training."""
    model, info = DeepseekV3ForCausalLM.from_pretrained(
        out_dir, dtype=torch.float32, attn_implementation="eager", experts_implementation="eager",
        output_loading_info=True,
    )
    assert not info["missing_keys"], info["missing_keys"]
    unexpected = sorted(info["unexpected_keys"])
    assert unexpected and all(k.startswith(MTP_PREFIX) for k in unexpected), unexpected
    with safe_open(out_dir / "model.safetensors", "pt") as f:
        ck = {k: f.get_tensor(k) for k in f.keys()}
    assert all(t.dtype == torch.float32 for t in ck.values())
    # transformers' own save (which also writes per-expert names) must give exactly our names
    with tempfile.TemporaryDirectory() as td:
        model.save_pretrained(td)
        with safe_open(Path(td) / "model.safetensors", "pt") as f:
            ours = {k for k in ck if not k.startswith(MTP_PREFIX)}
            assert set(f.keys()) == ours, sorted(set(f.keys()) ^ ours)
            for k in ours:
                assert torch.equal(f.get_tensor(k).float(), ck[k]), k
    assert torch.equal(ck[MTP_PREFIX + "embed_tokens.weight"], ck["model.embed_tokens.weight"])
    assert torch.equal(ck[MTP_PREFIX + "shared_head.head.weight"], ck["lm_head.weight"])
    mtp = MTPModule(model.config)
    mtp_state = mf.fuse_experts({k: v for k, v in ck.items() if k.startswith(MTP_PREFIX)})
    local = {}
    for k, v in mtp_state.items():
        rest = k[len(MTP_PREFIX):]
        if rest in ("embed_tokens.weight", "shared_head.head.weight"):
            continue  # the copies; the main tensors are used
        top = rest.split(".")[0]
        local[rest if top in ("enorm", "hnorm", "eh_proj", "shared_head") else "layer." + rest] = v
    mtp.load_state_dict(local, strict=True)
    model.double().train()
    mtp.double().train()
    taps = Taps(model, mtp)
    with torch.no_grad():
        out = forward_losses(model, mtp, taps, tokens)
    diffs = {t: abs(out[t].item() - step0[t]) for t in TERMS}
    assert max(diffs.values()) < 1e-12, diffs
    return {"unexpected_keys_on_reload": len(unexpected), "loss_abs_diff": diffs}


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "train_tiny"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # fixed reduction order
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    out_dir = Path(args.out)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, out={out_dir}")

    patch_diff = check_precise_patches(FIRST_INIT_SEED, FIRST_DATA_SEED)  # leaves the patches on

    # seed search: the float32 C++ trainer must make the same routing decisions
    for attempt in range(MAX_TRIES):
        init_seed, data_seed = FIRST_INIT_SEED + attempt, FIRST_DATA_SEED + attempt
        run = train(init_seed, data_seed, stop_below=MARGIN_MIN)
        if run is None:
            continue
        run32 = train(init_seed, data_seed, stop_below=None, dtype=torch.float32)
        if same_routing(run, run32):
            break
    else:
        raise SystemExit(f"no seed pair with routing margins >= {MARGIN_MIN} and float32-stable "
                         f"routing in {MAX_TRIES} tries")
    print(f"seeds: init {init_seed}, data {data_seed} (attempt {attempt + 1}); "
          f"min routing margin {run['min_margin']:.3e}")
    weights_after = weights_after_names(run["steps"])
    replay = float32_replay_diffs(run, run32, weights_after)
    print(f"float32 replay (transformers' float32 numerics): {replay}")

    steps, step0 = run["steps"], run["step0"]
    losses = [s["loss_total"] for s in steps]
    assert all(math.isfinite(v) for s in steps for v in (s["loss_total"], s["loss_main"], s["loss_mtp"],
                                                        s["loss_bal"], s["grad_norm"]))
    assert losses[-1] < losses[0] and min(losses) == losses[-1], losses

    _, model0, mtp0, _, tokens0 = build(init_seed, data_seed)
    structure = check_forward_structure(model0, mtp0, Taps(model0, mtp0), tokens0)
    fd = check_finite_differences(init_seed, data_seed, run["grads0"])
    print(f"finite differences: {fd['elements']} elements x {len(TERMS)} terms, "
          f"max abs err {fd['max_abs_err']:.2e}")

    # ---- write ----------------------------------------------------------------------------
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    cfg_json = mf.write_config(run["config"], SPEC, out_dir / "config.json")
    cfg_json["torch_dtype"] = "float32"  # this checkpoint is stored in float32
    (out_dir / "config.json").write_text(json.dumps(cfg_json, indent=2, sort_keys=True) + "\n")
    ckpt = run["ckpt"]
    save_file({k: ckpt[k] for k in sorted(ckpt)}, str(out_dir / "model.safetensors"), metadata={"format": "pt"})

    golden = {"batch": run["tokens"].to(torch.int32).contiguous()}
    for name, g in split_experts(run["grads0"]).items():
        golden["grad." + name] = g
    final = split_experts(named_state(run["model"], run["mtp"]))
    for key in MOE_LAYERS:
        name = f"model.layers.{key}.mlp.gate.e_score_correction_bias"
        golden["bias_after." + name] = final[name]
    for name in weights_after:
        golden["weights_after." + name] = final[name]
    grad_names = {k[len("grad."):] for k in golden if k.startswith("grad.")}
    expect = {k for k in ckpt if not k.endswith("e_score_correction_bias")} - {
        MTP_PREFIX + "embed_tokens.weight", MTP_PREFIX + "shared_head.head.weight"}
    assert grad_names == expect, sorted(grad_names ^ expect)
    save_file({k: golden[k] for k in sorted(golden)}, str(out_dir / "train_golden.safetensors"),
              metadata={"format": "pt"})

    reload = check_reload(out_dir, run["tokens"], step0)

    rope = run["model"].model.rotary_emb
    attn = run["model"].model.layers[0].self_attn
    meta = {
        "description": "tiny DeepSeek-V3 (2 layers: 0 dense, 1 MoE; MTP module = layer 2, MoE) trained "
                       "10 AdamW steps on one batch in float64; see reference/make_train_golden.py",
        "settings": {
            "B": B, "T": T, "init_seed": init_seed, "data_seed": data_seed, "init_std": INIT_STD,
            "lr_peak": LR_PEAK, "lr_min": LR_MIN, "warmup_steps": WARMUP, "total_steps": TOTAL,
            "beta1": BETAS[0], "beta2": BETAS[1], "eps": ADAM_EPS, "weight_decay": WEIGHT_DECAY,
            "weight_decay_on": "parameters with >= 2 dims", "clip": CLIP, "clip_eps": 1e-6,
            "lambda": MTP_LAMBDA, "mtp_depth": 1, "alpha": BAL_ALPHA, "gamma": BIAS_GAMMA,
            "routing_margin_threshold": MARGIN_MIN, "seed_attempts": attempt + 1,
            "compute_dtype": "float64",
        },
        "step0": step0,
        "steps": steps,
        "min_routing_margin": run["min_margin"],
        "expert_counts_step0": run["counts0"],
        "derived": {
            "softmax_scale": attn.scaling,
            "softmax_scale_formula": "(qk_nope+qk_rope)^-0.5 * (0.1*mscale_all_dim*ln(factor)+1)^2",
            "rope_inv_freq": rope.inv_freq.tolist(),
            "rope_attention_scaling": rope.attention_scaling,
            "rope_interleave": bool(run["config"].rope_interleave),
        },
        "golden_tensors": {
            "batch": "int32 [B, T+1]",
            "grad.NAME": "float32 dL_total/dNAME at step 0 (initial weights), before clipping; every "
                         "trainable tensor of model.safetensors except the MTP embed_tokens / "
                         "shared_head.head copies and the correction biases",
            "bias_after.NAME": "float32 e_score_correction_bias after the 10 steps",
            "weights_after.NAME": "float32 weights after the 10 steps",
            "weights_after": weights_after,
        },
        "checks": {
            "float64_patch_vs_transformers_max_abs_logit_diff": patch_diff,
            "forward_structure": structure,
            "finite_differences": {k: fd[k] for k in ("h", "elements", "max_abs_err")},
            "float32_replay": replay,
            "reload": reload,
        },
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
    }
    (out_dir / "train_golden.json").write_text(json.dumps(meta, indent=2) + "\n")

    sizes = {p.name: p.stat().st_size for p in sorted(out_dir.iterdir())}
    print("step 0: " + ", ".join(f"{k}={v:.6f}" if isinstance(v, float) else f"{k}={v}"
                                 for k, v in step0.items()))
    for s in steps:
        print(f"  step {s['step']}: lr={s['lr']:.5f} total={s['loss_total']:.6f} main={s['loss_main']:.6f} "
              f"mtp={s['loss_mtp']:.6f} bal={s['loss_bal']:.6f} |g|={s['grad_norm']:.4f} "
              f"margin={s['min_routing_margin']:.2e}")
    print(f"expert counts step 0: {run['counts0']}")
    print(f"reload: {reload['loss_abs_diff']}")
    print(f"wrote {sizes} ({sum(sizes.values())} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
