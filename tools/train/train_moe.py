#!/usr/bin/env python3
"""Train a tiny Mixtral-layout MoE language model, then fine-tune it two ways.

Run by hand (never by the build, the tests or CI), on a CPU:

    python3 -m venv /tmp/train && /tmp/train/bin/pip install -r tools/train/requirements.txt
    apt-get download python3.11-doc && dpkg-deb -x python3.11-doc_*.deb /tmp/pydoc
    /tmp/train/bin/python tools/train/train_moe.py --corpus /tmp/pydoc --out tests/fixtures/quality

Corpus: the reStructuredText sources of the Python 3.11 documentation as
Debian 12 ships them (package python3.11-doc, files
usr/share/doc/python3.11/html/_sources/**/*.rst.txt; PSF License
Version 2).  Tokens are bytes (vocabulary 256).  Split, fixed by
directory: test = tutorial/, validation = faq/, train = every other file.

Steps (the Pre-gated MoE paper's recipe, scaled down):
  base      conventional training from scratch
  control   from base, the same number of further steps, conventional
  pregated  from base, the same number of further steps with pre-gates:
            block N's pre-gate picks block N+1's experts and weights and
            block N+1 uses exactly those; the first block keeps its own
            gate (and has a pre-gate); the last has none.  Each pre-gate
            starts as a copy of the next block's gate.
Lookahead of 2 or 3 blocks is not trained: the engine's pre-gate predicts
the next block only.

Outputs (--out): control/ and pregated/ (config.json, model.safetensors
in bf16, the dtype the engine and the evaluation both read), test.tokens
(held-out windows), expected.json (this script's own evaluation of every
row, which tests/test_quality.c compares with the C engine), train.log,
versions.txt.
"""
import argparse
import glob
import json
import math
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

CFG = dict(vocab=256, hidden=128, layers=4, heads=4, kv_heads=2, head_dim=32, experts=8, top_k=2,
           ffn=256, rope_theta=10000.0, eps=1e-5, max_pos=512)
WINDOW = 128          # tokens per evaluation window
TEST_WINDOWS = 32     # held-out windows written to test.tokens
AUX = 0.01            # load-balancing loss coefficient (as Mixtral's router_aux_loss_coef)


def rms(x, w, eps):
    v = x.pow(2).mean(-1, keepdim=True)
    return w * (x * torch.rsqrt(v + eps))


def rope(x, pos, theta):
    # x [B, H, T, D]; rotate-half pairing (i, i + D/2), as transformers
    d = x.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    ang = pos[:, None].float() * inv[None, :]
    cos = torch.cat([ang.cos(), ang.cos()], -1)
    sin = torch.cat([ang.sin(), ang.sin()], -1)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


class Block(nn.Module):
    def __init__(self, c, has_pregate):
        super().__init__()
        H, hd = c["hidden"], c["head_dim"]
        self.c = c
        self.ln1 = nn.Parameter(torch.ones(H))
        self.ln2 = nn.Parameter(torch.ones(H))
        self.q = nn.Linear(H, c["heads"] * hd, bias=False)
        self.k = nn.Linear(H, c["kv_heads"] * hd, bias=False)
        self.v = nn.Linear(H, c["kv_heads"] * hd, bias=False)
        self.o = nn.Linear(c["heads"] * hd, H, bias=False)
        self.gate = nn.Linear(H, c["experts"], bias=False)
        self.pregate = nn.Linear(H, c["experts"], bias=False) if has_pregate else None
        E, Fd = c["experts"], c["ffn"]
        self.w1 = nn.Parameter(torch.randn(E, Fd, H) / math.sqrt(H))
        self.w3 = nn.Parameter(torch.randn(E, Fd, H) / math.sqrt(H))
        self.w2 = nn.Parameter(torch.randn(E, H, Fd) / math.sqrt(Fd) / math.sqrt(2 * c["layers"]))

    def attention(self, x, pos):
        c = self.c
        B, T, _ = x.shape
        h = rms(x, self.ln1, c["eps"])
        q = self.q(h).view(B, T, c["heads"], c["head_dim"]).transpose(1, 2)
        k = self.k(h).view(B, T, c["kv_heads"], c["head_dim"]).transpose(1, 2)
        v = self.v(h).view(B, T, c["kv_heads"], c["head_dim"]).transpose(1, 2)
        q, k = rope(q, pos, c["rope_theta"]), rope(k, pos, c["rope_theta"])
        rep = c["heads"] // c["kv_heads"]
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return x + self.o(a.transpose(1, 2).reshape(B, T, -1))

    def moe(self, h, logits):
        """Experts on h [N, H] routed by logits [N, E]: top-k of the softmax,
        renormalised (Mixtral)."""
        probs = F.softmax(logits.float(), -1)
        w, idx = probs.topk(self.c["top_k"], -1)
        w = w / w.sum(-1, keepdim=True)
        out = torch.zeros_like(h)
        for e in range(self.c["experts"]):
            tok, slot = (idx == e).nonzero(as_tuple=True)
            if tok.numel() == 0:
                continue
            x = h[tok]
            y = (F.silu(x @ self.w1[e].t()) * (x @ self.w3[e].t())) @ self.w2[e].t()
            out.index_add_(0, tok, y * w[tok, slot, None])
        return out, probs, idx


class TinyMoE(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.emb = nn.Embedding(c["vocab"], c["hidden"])
        nn.init.normal_(self.emb.weight, std=1.0)
        self.blocks = nn.ModuleList(Block(c, i + 1 < c["layers"]) for i in range(c["layers"]))
        self.norm = nn.Parameter(torch.ones(c["hidden"]))
        self.head = nn.Linear(c["hidden"], c["vocab"], bias=False)

    def forward(self, ids, mode="conventional"):
        """mode: conventional (each block's gate), pregated (the checkpoint
        pre-gate of block N routes block N+1; the first block its own
        gate), derived (block N+1's norm and gate on block N's output,
        the engine's zero-shot pre-gate).  Returns logits and the
        load-balancing loss."""
        B, T = ids.shape
        pos = torch.arange(T)
        x = self.emb(ids)
        aux = 0.0
        pred = None
        for i, blk in enumerate(self.blocks):
            x = blk.attention(x, pos)
            h = rms(x, blk.ln2, self.c["eps"]).reshape(B * T, -1)
            own = blk.gate(h)
            logits = own if (mode == "conventional" or pred is None) else pred
            y, probs, idx = blk.moe(h, logits)
            # load balance: fraction routed x mean probability, per expert
            frac = F.one_hot(idx, self.c["experts"]).float().sum(1).mean(0)
            aux = aux + self.c["experts"] * (frac * probs.mean(0)).sum()
            if mode == "pregated" and blk.pregate is not None:
                pred = blk.pregate(h)
            x = x + y.view(B, T, -1)
            if mode == "derived" and i + 1 < len(self.blocks):
                nxt = self.blocks[i + 1]
                # the engine's derived pre-gate sees the residual after this
                # block's MoE, before the next block's attention
                pred = nxt.gate(rms(x, nxt.ln2, self.c["eps"]).reshape(B * T, -1))
        return self.head(rms(x, self.norm, self.c["eps"])), aux


def read_corpus(root):
    src = os.path.join(root, "usr/share/doc/python3.11/html/_sources")
    files = sorted(glob.glob(os.path.join(src, "**/*.rst.txt"), recursive=True))
    if not files:
        sys.exit(f"no .rst.txt files under {src}")
    parts = {"train": [], "validation": [], "test": []}
    for f in files:
        rel = os.path.relpath(f, src)
        key = "test" if rel.startswith("tutorial/") else "validation" if rel.startswith("faq/") else "train"
        with open(f, "rb") as fh:
            parts[key].append(fh.read())
    return {k: torch.tensor(list(b"\n".join(v)), dtype=torch.long) for k, v in parts.items()}, len(files)


def batches(data, batch, seq, gen):
    while True:
        i = torch.randint(0, data.numel() - seq - 1, (batch,), generator=gen)
        yield torch.stack([data[j: j + seq] for j in i.tolist()])


def evaluate(model, windows, mode):
    """Mean cross-entropy (nats), perplexity, top-1 accuracy over windows
    [N, W]: every position but the first is predicted from its prefix."""
    model.eval()
    nll, hit, n = 0.0, 0, 0
    with torch.no_grad():
        for w in windows.split(8):
            logits, _ = model(w, mode)
            lp = F.log_softmax(logits[:, :-1].double(), -1)
            tgt = w[:, 1:]
            nll += -lp.gather(-1, tgt[..., None]).sum().item()
            hit += (logits[:, :-1].argmax(-1) == tgt).sum().item()
            n += tgt.numel()
    model.train()
    ce = nll / n
    return {"cross_entropy": ce, "perplexity": math.exp(ce), "accuracy": hit / n, "tokens": n}


def train(model, data, steps, mode, lr, log, tag, gen):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    t0 = time.time()
    for step, x in zip(range(steps), batches(data, 16, WINDOW, gen)):
        logits, aux = model(x, mode)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, 256), x[:, 1:].reshape(-1)) + AUX * aux
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"{tag} step {step} loss {loss.item():.4f} ({time.time() - t0:.0f} s)")


def to_bf16_(model):
    """Rounds every weight to bf16 (the exported dtype), so the script's own
    evaluation sees exactly what the engine loads."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())


def export(model, out, pregate):
    from safetensors.torch import save_file
    c = model.c
    os.makedirs(out, exist_ok=True)
    t = {"model.embed_tokens.weight": model.emb.weight, "model.norm.weight": model.norm,
         "lm_head.weight": model.head.weight}
    for i, b in enumerate(model.blocks):
        p = f"model.layers.{i}"
        t[f"{p}.input_layernorm.weight"] = b.ln1
        t[f"{p}.post_attention_layernorm.weight"] = b.ln2
        for n in "qkvo":
            t[f"{p}.self_attn.{n}_proj.weight"] = getattr(b, n).weight
        t[f"{p}.block_sparse_moe.gate.weight"] = b.gate.weight
        if pregate and b.pregate is not None:
            t[f"{p}.block_sparse_moe.pregate.weight"] = b.pregate.weight
        for e in range(c["experts"]):
            q = f"{p}.block_sparse_moe.experts.{e}"
            t[f"{q}.w1.weight"], t[f"{q}.w3.weight"], t[f"{q}.w2.weight"] = b.w1[e], b.w3[e], b.w2[e]
    save_file({k: v.detach().to(torch.bfloat16).contiguous() for k, v in t.items()},
              os.path.join(out, "model.safetensors"))
    cfg = {"model_type": "mixtral", "architectures": ["MixtralForCausalLM"], "vocab_size": c["vocab"],
           "hidden_size": c["hidden"], "intermediate_size": c["ffn"], "num_hidden_layers": c["layers"],
           "num_attention_heads": c["heads"], "num_key_value_heads": c["kv_heads"],
           "head_dim": c["head_dim"], "num_local_experts": c["experts"],
           "num_experts_per_tok": c["top_k"], "rms_norm_eps": c["eps"], "rope_theta": c["rope_theta"],
           "max_position_embeddings": c["max_pos"], "tie_word_embeddings": False,
           "hidden_act": "silu", "torch_dtype": "bfloat16", "bos_token_id": None, "eos_token_id": None}
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", required=True, help="root of the extracted python3.11-doc package")
    ap.add_argument("--out", required=True)
    ap.add_argument("--base-steps", type=int, default=1500)
    ap.add_argument("--tune-steps", type=int, default=400)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    os.makedirs(a.out, exist_ok=True)
    logf = open(os.path.join(a.out, "train.log"), "w")

    def log(s):
        print(s, flush=True)
        logf.write(s + "\n")
        logf.flush()

    data, nfiles = read_corpus(a.corpus)
    log(f"corpus: {nfiles} files; train {data['train'].numel()} bytes, validation "
        f"{data['validation'].numel()}, test {data['test'].numel()}")
    test = data["test"][: TEST_WINDOWS * WINDOW].view(TEST_WINDOWS, WINDOW)
    val = data["validation"][: 64 * WINDOW].view(64, WINDOW)
    with open(os.path.join(a.out, "test.tokens"), "w") as f:
        f.write("# held-out windows: python3.11-doc tutorial/*.rst.txt, bytes as token ids; "
                f"{TEST_WINDOWS} windows of {WINDOW}\n")
        for w in test.tolist():
            f.write(" ".join(map(str, w)) + "\n")
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    model = TinyMoE(CFG)
    log(f"parameters: {sum(p.numel() for p in model.parameters())}")
    train(model, data["train"], a.base_steps, "conventional", 3e-3, log, "base", gen)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    log(f"base validation: {evaluate(model, val, 'conventional')}")

    rows = {}
    for name, mode in (("control", "conventional"), ("pregated", "pregated")):
        model.load_state_dict(base)
        if mode == "pregated":
            with torch.no_grad():  # each pre-gate starts as the next block's gate
                for i in range(CFG["layers"] - 1):
                    model.blocks[i].pregate.weight.copy_(model.blocks[i + 1].gate.weight)
        g2 = torch.Generator().manual_seed(a.seed + 1)  # the same batches for both
        train(model, data["train"], a.tune_steps, mode, 1e-3, log, name, g2)
        to_bf16_(model)
        export(model, os.path.join(a.out, name), pregate=(mode == "pregated"))
        for m in ("conventional", "pregated", "derived"):
            if m == "pregated" and name != "pregated":
                continue
            r = evaluate(model, test, m)
            rows[f"{name}/{m}"] = r
            log(f"{name} test, routing {m}: {r}")
    with open(os.path.join(a.out, "expected.json"), "w") as f:
        json.dump({"window": WINDOW, "windows": TEST_WINDOWS, "rows": rows}, f, indent=2)
        f.write("\n")
    import transformers
    import safetensors
    with open(os.path.join(a.out, "versions.txt"), "w") as f:
        f.write(f"torch {torch.__version__}\ntransformers {transformers.__version__}\n"
                f"safetensors {safetensors.__version__}\npython {sys.version.split()[0]}\n"
                f"corpus: Debian 12 python3.11-doc, {nfiles} .rst.txt files\n"
                f"seed {a.seed}; base {a.base_steps} steps, control and pregated {a.tune_steps} each\n")


if __name__ == "__main__":
    main()
