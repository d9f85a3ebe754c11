#!/usr/bin/python3
"""Python torch reference for tools/bench/step.sh: one training step (forward + loss + backward + AdamW)
of the same ~15M-parameter Llama as step_bench.cpp, written the way HF's modeling_llama does it
(nn.Linear per projection, full [B*T, V] logits + F.cross_entropy, torch.optim.AdamW).

usage: step_ref.py --precision fp32|bf16 [--threads 2] [--steps 5] [--warmup 2]
prints one JSON line with every timed step; tools/bench/step_report.py takes medians.
"""
import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

CFG = dict(vocab=8192, hidden=384, inter=1024, layers=6, heads=6, kv_heads=2, eps=1e-5, theta=10000.0)


class RMSNorm(nn.Module):
    def __init__(self, n, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        dt = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dt)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        C, H, Hkv = c["hidden"], c["heads"], c["kv_heads"]
        self.H, self.Hkv, self.hd = H, Hkv, C // H
        self.input_layernorm = RMSNorm(C, c["eps"])
        self.q_proj = nn.Linear(C, H * self.hd, bias=False)
        self.k_proj = nn.Linear(C, Hkv * self.hd, bias=False)
        self.v_proj = nn.Linear(C, Hkv * self.hd, bias=False)
        self.o_proj = nn.Linear(H * self.hd, C, bias=False)
        self.post_attention_layernorm = RMSNorm(C, c["eps"])
        self.gate_proj = nn.Linear(C, c["inter"], bias=False)
        self.up_proj = nn.Linear(C, c["inter"], bias=False)
        self.down_proj = nn.Linear(c["inter"], C, bias=False)

    def forward(self, x, cos, sin, mask):
        B, T, _ = x.shape
        h = self.input_layernorm(x)
        q = self.q_proj(h).view(B, T, self.H, self.hd).transpose(1, 2)
        k = self.k_proj(h).view(B, T, self.Hkv, self.hd).transpose(1, 2)
        v = self.v_proj(h).view(B, T, self.Hkv, self.hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = self.H // self.Hkv
        k = k[:, :, None].expand(B, self.Hkv, rep, T, self.hd).reshape(B, self.H, T, self.hd)
        v = v[:, :, None].expand(B, self.Hkv, rep, T, self.hd).reshape(B, self.H, T, self.hd)
        a = (q @ k.transpose(2, 3)) / math.sqrt(self.hd) + mask
        a = F.softmax(a, dim=-1, dtype=torch.float32).to(q.dtype)
        y = (a @ v).transpose(1, 2).reshape(B, T, -1)
        x = x + self.o_proj(y)
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class Llama(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed_tokens = nn.Embedding(c["vocab"], c["hidden"])
        self.layers = nn.ModuleList([Block(c) for _ in range(c["layers"])])
        self.norm = RMSNorm(c["hidden"], c["eps"])
        self.lm_head = nn.Linear(c["hidden"], c["vocab"], bias=False)
        hd = c["hidden"] // c["heads"]
        self.inv_freq = 1.0 / (c["theta"] ** (torch.arange(0, hd, 2).float() / hd))
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.normal_(p, std=0.02)

    def forward(self, ids):
        B, T = ids.shape
        ang = torch.arange(T).float()[:, None] * self.inv_freq
        emb = torch.cat([ang, ang], -1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]
        mask = torch.full((T, T), float("-inf")).triu(1)
        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return self.lm_head(self.norm(x)).float()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    model = Llama(CFG)
    n = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    ids = torch.randint(0, CFG["vocab"], (a.batch, a.seq))

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.precision == "bf16"):
            logits = model(ids)
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, CFG["vocab"]), ids[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(a.warmup):
        step()
    # Every timed step is reported (no minimum, no mean): the report takes medians and ranges.
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"side": "python", "precision": a.precision, "params": n, "threads": a.threads,
                      "tokens_per_step": a.batch * a.seq, "loss": loss, "step_s": times}))


if __name__ == "__main__":
    main()
