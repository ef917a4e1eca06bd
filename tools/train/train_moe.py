#!/usr/bin/env python3
"""Train a tiny Mixtral-layout MoE language model, then fine-tune it two ways.

Run by hand (never by the build, the tests or CI), on a CPU:

    python3 -m venv /tmp/train && /tmp/train/bin/pip install -r tools/train/requirements.txt
    apt-get download python3.11-doc && dpkg-deb -x python3.11-doc_*.deb /tmp/pydoc
    /tmp/train/bin/python tools/train/train_moe.py --corpus /tmp/pydoc --out workloads/trained \
        --base-steps 2400 --tune-steps 600
    # the committed checkpoints re-evaluated, no training (docs/QUALITY.md):
    /tmp/train/bin/python tools/train/train_moe.py --corpus /tmp/pydoc --out workloads/trained \
        --eval-only --threads 1

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

Held-out windows: the whole test split (tutorial/*.rst.txt in sorted
order, joined by one newline byte, as read_corpus builds it) cut into
consecutive non-overlapping windows of WINDOW bytes; the tail shorter
than a window is dropped (256,319 bytes -> 2,002 windows, 254,254
predicted bytes).  A window may straddle two files.  No sampling, so no
seed.

Intervals (expected.json, per row): 95% confidence intervals of the mean
cross-entropy and top-1 accuracy, from the per-window means (every window
predicts WINDOW - 1 bytes, so the mean of the window means is the row's
figure): mean +- t(0.975, n - 1) * sd / sqrt(n) over the n windows
("ci95"); the perplexity interval is exp() of the cross-entropy one.
Windows of one file are not independent, so a second interval (wider
for the rows, not always for the paired changes) treats each file as one
cluster (the file holding a window's first
byte; cluster-robust standard error, t with files - 1 degrees of freedom:
"ci95_by_file").  Against the first row (control/conventional), paired
on the same windows: the difference in cross-entropy, the matching
relative change in perplexity, exp(d) - 1, and the difference in accuracy,
with the same two intervals ("vs_control").  expected.json's
"peer_subset": the same rows, no intervals, on every PEER_STRIDE-th
window from the first, the subset tests/test_quality.c checks.

Modes:
  (default)       train base, control, pregated; export; evaluate.
  --eval-only     no training: load control/ and pregated/ from --out
                  (the committed checkpoints, bit for bit), rewrite
                  test.tokens and expected.json.
  --tune-seeds A,B,...  after training (or loading, --base-ckpt) the base,
                  fine-tune control and pregated once per seed (the seed of
                  the fine-tune's batch order; the default run uses
                  --seed + 1) and evaluate each on the held-out windows;
                  write seeds.json and train-seeds.log to --out (checkpoints
                  of every seed to --out/seed-N/, not to be committed).
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
PEER_STRIDE = 16      # tests/test_quality.c checks every 16th held-out window
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


def test_windows(data):
    """The whole test split as consecutive windows of WINDOW bytes, the
    short tail dropped."""
    n = data.numel() // WINDOW
    return data[: n * WINDOW].view(n, WINDOW)


def window_files(root, nwin):
    """For every held-out window, the index of the test file (sorted order)
    that holds its first byte: read_corpus joins the files with one byte."""
    src = os.path.join(root, "usr/share/doc/python3.11/html/_sources/tutorial")
    sizes = [os.path.getsize(f) for f in sorted(glob.glob(os.path.join(src, "**/*.rst.txt"),
                                                         recursive=True))]
    starts, at = [], 0
    for s in sizes:
        starts.append(at)
        at += s + 1
    return [max(j for j, st in enumerate(starts) if st <= i * WINDOW) for i in range(nwin)]


def t_quantile(df, p=0.975):
    """Student t quantile by bisection on a numerically integrated CDF
    (no scipy); exact to about 1e-6 for df >= 2."""
    dist = torch.distributions.StudentT(torch.tensor(float(df), dtype=torch.float64))

    def cdf(x):
        g = torch.linspace(0.0, x, 20001, dtype=torch.float64)
        return 0.5 + torch.trapezoid(dist.log_prob(g).exp(), g).item()

    lo, hi = 0.0, 50.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def interval(x, files):
    """95% intervals of the mean of per-window values x (a float64 tensor):
    windows as independent draws, and windows clustered by file."""
    n = x.numel()
    m = x.mean().item()
    h = t_quantile(n - 1) * x.std().item() / math.sqrt(n)
    f = torch.tensor(files)
    ids = sorted(set(files))
    g = len(ids)
    sums = torch.stack([(x[f == k] - m).sum() for k in ids])
    se_c = math.sqrt(g / (g - 1) * (sums ** 2).sum().item()) / n
    hc = t_quantile(g - 1) * se_c
    return m, [m - h, m + h], [m - hc, m + hc]


def evaluate(model, windows, mode):
    """Mean cross-entropy (nats), perplexity, top-1 accuracy over windows
    [N, W]: every position but the first is predicted from its prefix.
    Also the per-window sums (for the intervals), under "_per_window"."""
    model.eval()
    nll_w, hit_w = [], []
    with torch.no_grad():
        for w in windows.split(8):
            logits, _ = model(w, mode)
            lp = F.log_softmax(logits[:, :-1].double(), -1)
            tgt = w[:, 1:]
            nll_w.append(-lp.gather(-1, tgt[..., None])[..., 0].sum(-1))
            hit_w.append((logits[:, :-1].argmax(-1) == tgt).sum(-1).double())
    model.train()
    nll_w, hit_w = torch.cat(nll_w), torch.cat(hit_w)
    n = windows.shape[0] * (windows.shape[1] - 1)
    ce = nll_w.sum().item() / n
    return {"cross_entropy": ce, "perplexity": math.exp(ce), "accuracy": hit_w.sum().item() / n,
            "tokens": n, "_per_window": (nll_w / (windows.shape[1] - 1), hit_w / (windows.shape[1] - 1))}


def add_intervals(rows, files, ref="control/conventional"):
    """Adds ci95, ci95_by_file and vs_control (paired against ref) to each row
    and drops the per-window values."""
    rce, racc = rows[ref]["_per_window"]
    for key, r in rows.items():
        ce, acc = r["_per_window"]
        _, ci, cf = interval(ce, files)
        _, ai, af = interval(acc, files)
        r["ci95"] = {"cross_entropy": ci, "perplexity": [math.exp(v) for v in ci], "accuracy": ai}
        r["ci95_by_file"] = {"cross_entropy": cf, "perplexity": [math.exp(v) for v in cf],
                             "accuracy": af}
        if key != ref:
            d, di, dfl = interval(ce - rce, files)
            a, ai2, af2 = interval(acc - racc, files)
            r["vs_control"] = {
                "cross_entropy_diff": d, "cross_entropy_diff_ci95": di,
                "cross_entropy_diff_ci95_by_file": dfl,
                "perplexity_change": math.exp(d) - 1,
                "perplexity_change_ci95": [math.exp(v) - 1 for v in di],
                "perplexity_change_ci95_by_file": [math.exp(v) - 1 for v in dfl],
                "accuracy_diff": a, "accuracy_diff_ci95": ai2, "accuracy_diff_ci95_by_file": af2}
        del r["_per_window"]
    return rows


def load_checkpoint(model, d):
    """The inverse of export(): a committed checkpoint back into the torch
    model (bf16 values, float32 storage, so exactly what was evaluated)."""
    from safetensors.torch import load_file
    t = load_file(os.path.join(d, "model.safetensors"))
    with torch.no_grad():
        def put(p, name):
            p.copy_(t.pop(name).float())
        put(model.emb.weight, "model.embed_tokens.weight")
        put(model.norm, "model.norm.weight")
        put(model.head.weight, "lm_head.weight")
        for i, b in enumerate(model.blocks):
            p = f"model.layers.{i}"
            put(b.ln1, f"{p}.input_layernorm.weight")
            put(b.ln2, f"{p}.post_attention_layernorm.weight")
            for n in "qkvo":
                put(getattr(b, n).weight, f"{p}.self_attn.{n}_proj.weight")
            put(b.gate.weight, f"{p}.block_sparse_moe.gate.weight")
            name = f"{p}.block_sparse_moe.pregate.weight"
            if b.pregate is not None and name in t:
                put(b.pregate.weight, name)
            for e in range(model.c["experts"]):
                q = f"{p}.block_sparse_moe.experts.{e}"
                put(b.w1[e], f"{q}.w1.weight")
                put(b.w3[e], f"{q}.w3.weight")
                put(b.w2[e], f"{q}.w2.weight")
    if t:
        sys.exit(f"{d}: tensors not read: {sorted(t)[:4]}")


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


MODES = {"control": ("conventional", "derived"), "pregated": ("conventional", "pregated", "derived")}


def eval_rows(model, name, test, log, tag="", peer=None):
    """Every row of one model on the held-out windows; with peer (a dict),
    also on the test's subset, every PEER_STRIDE-th window, into peer."""
    rows = {}
    for m in MODES[name]:
        r = evaluate(model, test, m)
        rows[f"{name}/{m}"] = r
        log(f"{tag}{name} test, routing {m}: " + str({k: v for k, v in r.items() if k[0] != "_"}))
        if peer is not None:
            r = evaluate(model, test[::PEER_STRIDE], m)
            del r["_per_window"]
            peer[f"{name}/{m}"] = r
    return rows


def ordered(rows):
    return {k: rows[k] for n in MODES for k in (f"{n}/{m}" for m in MODES[n])}


def write_eval(out, test, rows, files, peer):
    with open(os.path.join(out, "test.tokens"), "w") as f:
        f.write("# held-out windows: python3.11-doc tutorial/*.rst.txt (sorted, joined by a newline), "
                f"bytes as token ids; the whole split as {test.shape[0]} consecutive windows of "
                f"{WINDOW}, the short tail dropped (tools/train/train_moe.py)\n")
        for w in test.tolist():
            f.write(" ".join(map(str, w)) + "\n")
    rows = add_intervals(ordered(rows), files)
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump({"window": WINDOW, "windows": test.shape[0], "files": len(set(files)),
                   "interval": "95%; ci95: t over windows; ci95_by_file: cluster-robust, t over "
                   "files; vs_control: paired on the same windows against control/conventional",
                   "rows": rows,
                   "peer_subset": {"stride": PEER_STRIDE, "windows": test[::PEER_STRIDE].shape[0],
                                   "what": "every stride-th window of test.tokens, from the first: "
                                   "what tests/test_quality.c checks the engine against",
                                   "rows": ordered(peer)}}, f, indent=2)
        f.write("\n")


def fine_tune(model, base, name, data, steps, seed, log, tag=""):
    model.load_state_dict(base)
    if name == "pregated":
        with torch.no_grad():  # each pre-gate starts as the next block's gate
            for i in range(CFG["layers"] - 1):
                model.blocks[i].pregate.weight.copy_(model.blocks[i + 1].gate.weight)
    g2 = torch.Generator().manual_seed(seed)  # the same batches for both
    mode = "pregated" if name == "pregated" else "conventional"
    train(model, data, steps, mode, 1e-3, log, f"{tag}{name}", g2)
    to_bf16_(model)


def spread(seeds):
    out = {}
    for key in next(iter(seeds.values())):
        for fig in ("perplexity", "accuracy", "cross_entropy"):
            v = [s[key][fig] for s in seeds.values() if key in s]
            mean = sum(v) / len(v)
            sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else None
            out.setdefault(key, {})[fig] = {"mean": mean, "min": min(v), "max": max(v), "sd": sd,
                                            "n": len(v)}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", required=True, help="root of the extracted python3.11-doc package")
    ap.add_argument("--out", required=True)
    ap.add_argument("--base-steps", type=int, default=1500)
    ap.add_argument("--tune-steps", type=int, default=400)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-only", action="store_true",
                    help="no training: evaluate the checkpoints already in --out")
    ap.add_argument("--tune-seeds", help="comma-separated fine-tune seeds: the seed study")
    ap.add_argument("--base-ckpt", help="torch file of the base: loaded if present, else written")
    ap.add_argument("--compare", help="with --tune-seeds: a directory of committed control/ and "
                    "pregated/ to compare each seed's checkpoints with")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    os.makedirs(a.out, exist_ok=True)
    data, nfiles = read_corpus(a.corpus)
    test = test_windows(data["test"])
    files = window_files(a.corpus, test.shape[0])

    if a.eval_only:
        rows, peer = {}, {}
        for name in MODES:
            model = TinyMoE(CFG)
            load_checkpoint(model, os.path.join(a.out, name))
            rows.update(eval_rows(model, name, test, print, peer=peer))
        write_eval(a.out, test, rows, files, peer)
        return

    logf = open(os.path.join(a.out, "train-seeds.log" if a.tune_seeds else "train.log"), "w")

    def log(s):
        print(s, flush=True)
        logf.write(s + "\n")
        logf.flush()

    log(f"corpus: {nfiles} files; train {data['train'].numel()} bytes, validation "
        f"{data['validation'].numel()}, test {data['test'].numel()}")
    val = data["validation"][: 64 * WINDOW].view(64, WINDOW)
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    model = TinyMoE(CFG)
    log(f"parameters: {sum(p.numel() for p in model.parameters())}")
    if a.base_ckpt and os.path.exists(a.base_ckpt):
        model.load_state_dict(torch.load(a.base_ckpt))
        log(f"base loaded from {os.path.basename(a.base_ckpt)}")
    else:
        train(model, data["train"], a.base_steps, "conventional", 3e-3, log, "base", gen)
        if a.base_ckpt:
            torch.save(model.state_dict(), a.base_ckpt)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    r = evaluate(model, val, "conventional")
    log("base validation: " + str({k: v for k, v in r.items() if k[0] != "_"}))

    if a.tune_seeds:
        from safetensors.torch import load_file
        seeds, diffs = {}, {}
        for sd in (int(x) for x in a.tune_seeds.split(",")):
            rows = {}
            for name in ("pregated", "control"):
                fine_tune(model, base, name, data["train"], a.tune_steps, sd, log, f"seed {sd} ")
                d = os.path.join(a.out, f"seed-{sd}", name)
                export(model, d, pregate=(name == "pregated"))
                if a.compare:
                    mine = load_file(os.path.join(d, "model.safetensors"))
                    ref = load_file(os.path.join(a.compare, name, "model.safetensors"))
                    diff = max((mine[k].float() - ref[k].float()).abs().max().item() for k in ref)
                    same = all(torch.equal(mine[k], ref[k]) for k in ref)
                    diffs[f"{sd}/{name}"] = {"identical": same, "max_abs_weight_diff": diff}
                    log(f"seed {sd} {name} vs committed: identical {same}, max |diff| {diff:.3g}")
                rows.update(eval_rows(model, name, test, log, f"seed {sd} "))
            seeds[str(sd)] = {k: {f: v for f, v in r.items() if f[0] != "_"}
                              for k, r in ordered(rows).items()}
            with open(os.path.join(a.out, "seeds.json"), "w") as f:
                json.dump({"base_seed": a.seed, "base_steps": a.base_steps,
                           "tune_steps": a.tune_steps, "windows": test.shape[0],
                           "tokens": test.shape[0] * (WINDOW - 1), "seeds": seeds,
                           "spread": spread(seeds), "vs_committed": diffs}, f, indent=2)
                f.write("\n")
        return

    rows, peer = {}, {}
    for name in ("control", "pregated"):
        fine_tune(model, base, name, data["train"], a.tune_steps, a.seed + 1, log)
        export(model, os.path.join(a.out, name), pregate=(name == "pregated"))
        rows.update(eval_rows(model, name, test, log, peer=peer))
    write_eval(a.out, test, rows, files, peer)
    import transformers
    import safetensors
    with open(os.path.join(a.out, "versions.txt"), "w") as f:
        f.write(f"torch {torch.__version__}\ntransformers {transformers.__version__}\n"
                f"safetensors {safetensors.__version__}\npython {sys.version.split()[0]}\n"
                f"corpus: Debian 12 python3.11-doc, {nfiles} .rst.txt files\n"
                f"seed {a.seed}; base {a.base_steps} steps, control and pregated {a.tune_steps} each\n")


if __name__ == "__main__":
    main()
