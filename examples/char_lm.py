#!/usr/bin/env python
"""Character-level language model (embedding -> LSTM/GRU -> linear) trained with torch.nn or rnnfast.

    python examples/char_lm.py --impl rnnfast --cell LSTM --steps 500
    python examples/char_lm.py --compare --cell GRU --steps 200 --json gru.json

The corpus defaults to examples/data/tinyshakespeare.txt (see examples/data/README.md).
The first 90 % of the text trains, the last 10 % validates. Each step samples `--batch` windows of
`--seq-len + 1` characters at random offsets from a generator seeded with --seed, so both
implementations see exactly the same batches; the recurrent state starts at zero in every window.
Adam (lr --lr), gradient norm clipped at 1.0, fp32, torch.set_num_threads(--threads).

Same seed -> same initial parameters: the model is built under torch.manual_seed(seed) with
torch.nn.<cell> (the reference) and again with the chosen implementation; rnnfast modules subclass
torch's and initialise identically, which is checked (and reported) before training; if they were not
identical the torch initialisation is copied in and the report says so.

--compare trains both implementations in one process, step by step interleaved (torch step i,
rnnfast step i, on the same batch), and reports the max abs difference of the two loss curves and
the tokens/s ratio. tokens/s counts batch*seq_len tokens per optimizer step (forward, backward,
clipping and the Adam update included), over the steps after --warmup-steps.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
DEFAULT_DATA = os.path.join(HERE, "data", "tinyshakespeare.txt")


def load_rnnfast():
    """Import rnnfast (preferring the repo's in-place build) and its compiled extension, or raise."""
    if REPO_ROOT not in sys.path:
        sys.path.insert(1, REPO_ROOT)
    import importlib

    rnnfast = importlib.import_module("rnnfast")
    importlib.import_module("rnnfast._C")  # ImportError if the extension is not built
    return rnnfast


def rnn_class(impl: str, cell: str):
    if impl == "torch":
        return getattr(nn, cell)
    return getattr(load_rnnfast(), cell)


class CharLM(nn.Module):
    def __init__(self, rnn_cls, vocab: int, embed: int, hidden: int, layers: int, dropout: float):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.rnn = rnn_cls(embed, hidden, num_layers=layers, dropout=dropout)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, idx):  # idx: [T, B] long -> logits [T, B, V]
        out, _ = self.rnn(self.embed(idx))
        return self.head(out)


class Corpus:
    def __init__(self, path: str):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        self.chars = sorted(set(text))
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        data = torch.tensor([self.stoi[c] for c in text], dtype=torch.long)
        n = int(0.9 * len(data))
        self.train, self.val = data[:n], data[n:]

    def batch(self, split: torch.Tensor, B: int, T: int, gen: torch.Generator):
        """Inputs [T, B] and next-character targets [T, B] from B random windows."""
        starts = torch.randint(0, len(split) - T - 1, (B,), generator=gen)
        win = torch.stack([split[s:s + T + 1] for s in starts.tolist()], dim=1)
        return win[:-1], win[1:]


def build_model(impl: str, args, vocab: int) -> tuple[CharLM, dict]:
    """Model for `impl`, initialised as torch.nn would be under args.seed; reports init identity."""
    torch.manual_seed(args.seed)
    ref = CharLM(nn.GRU if args.cell == "GRU" else nn.LSTM, vocab, args.embed, args.hidden,
                 args.layers, args.dropout)
    torch.manual_seed(args.seed)
    model = CharLM(rnn_class(impl, args.cell), vocab, args.embed, args.hidden, args.layers, args.dropout)
    ref_sd, sd = ref.state_dict(), model.state_dict()
    same_keys = list(ref_sd) == list(sd)
    identical = same_keys and all(torch.equal(ref_sd[k], sd[k]) for k in ref_sd)
    info = {"init_identical_to_torch": identical, "init_copied_from_torch": False}
    if not identical:
        model.load_state_dict(ref_sd, strict=True)
        info["init_copied_from_torch"] = True
    return model, info


class Trainer:
    def __init__(self, impl: str, args, corpus: Corpus):
        self.impl = impl
        self.model, self.init_info = build_model(impl, args, len(corpus.chars))
        self.model.train()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=args.lr)
        self.losses: list[float] = []
        self.step_s: list[float] = []

    def step(self, x, y) -> float:
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        logits = self.model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        val = loss.item()
        self.step_s.append(time.perf_counter() - t0)
        self.losses.append(val)
        return val

    @torch.no_grad()
    def evaluate(self, batches) -> float:
        self.model.eval()
        tot = 0.0
        for x, y in batches:
            logits = self.model(x)
            tot += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).item()
        self.model.train()
        return tot / len(batches)

    def tokens_per_s(self, tokens_per_step: int, warmup: int) -> float:
        steps = self.step_s[warmup:] or self.step_s
        return tokens_per_step * len(steps) / sum(steps)


def sample(trainer: Trainer, corpus: Corpus, n: int, seed: int, prompt: str = "\n") -> str:
    """Greedy-free sampling (temperature 1) from the trained model, for a human look at the result."""
    m = trainer.model.eval()
    gen = torch.Generator().manual_seed(seed)
    idx = torch.tensor([[corpus.stoi.get(c, 0)] for c in prompt], dtype=torch.long)
    out = []
    with torch.no_grad():
        state = None
        h, state = m.rnn(m.embed(idx), state)
        logits = m.head(h[-1:])
        for _ in range(n):
            nxt = torch.multinomial(F.softmax(logits[-1, 0], -1), 1, generator=gen)
            out.append(corpus.chars[int(nxt)])
            h, state = m.rnn(m.embed(nxt.view(1, 1)), state)
            logits = m.head(h)
    m.train()
    return "".join(out)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    p.add_argument("--impl", choices=["torch", "rnnfast"], default="rnnfast")
    p.add_argument("--compare", action="store_true", help="train torch and rnnfast side by side")
    p.add_argument("--cell", choices=["LSTM", "GRU"], default="LSTM")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--embed", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--dropout", type=float, default=0.0,
                   help="inter-layer dropout (>0 draws random masks: curves then differ by design)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--eval-batches", type=int, default=8, help="validation batches at the end (0: none)")
    p.add_argument("--warmup-steps", type=int, default=3, help="steps left out of tokens/s")
    p.add_argument("--sample", type=int, default=0, help="print this many sampled characters at the end")
    p.add_argument("--json", default=None, help="write loss curve(s) and tokens/s here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    corpus = Corpus(args.data)
    impls = ["torch", "rnnfast"] if args.compare else [args.impl]
    if "rnnfast" in impls:
        rnnfast = load_rnnfast()  # fail loudly before any training
        backend = rnnfast.backend() if hasattr(rnnfast, "backend") else None
    else:
        backend = None
    trainers = {impl: Trainer(impl, args, corpus) for impl in impls}
    tok = args.batch * args.seq_len
    nparams = sum(p.numel() for p in next(iter(trainers.values())).model.parameters())
    print(f"char_lm: {args.cell} x{args.layers} hidden {args.hidden}, embed {args.embed}, vocab "
          f"{len(corpus.chars)}, {nparams / 1e6:.2f}M params; batch {args.batch} x seq {args.seq_len}; "
          f"{args.steps} steps; threads {torch.get_num_threads()}; impls {impls}", flush=True)
    for impl, tr in trainers.items():
        print(f"  {impl}: init identical to torch.nn under seed {args.seed}: "
              f"{tr.init_info['init_identical_to_torch']}"
              + (" (torch init copied in)" if tr.init_info["init_copied_from_torch"] else ""))
    if backend is not None:
        print(f"  rnnfast backend: {backend}")

    gen = torch.Generator().manual_seed(args.seed + 1)
    t_start = time.perf_counter()
    for step in range(1, args.steps + 1):
        x, y = corpus.batch(corpus.train, args.batch, args.seq_len, gen)
        order = impls if step % 2 else impls[::-1]  # alternate who goes first
        for impl in order:
            trainers[impl].step(x, y)
        if step % args.log_every == 0 or step == 1 or step == args.steps:
            parts = []
            for impl in impls:
                tr = trainers[impl]
                recent = tr.step_s[-args.log_every:]
                parts.append(f"{impl} loss {tr.losses[-1]:.4f} ({tok * len(recent) / sum(recent):,.0f} tok/s)")
            print(f"step {step:5d}  " + "  |  ".join(parts), flush=True)
    wall = time.perf_counter() - t_start

    report = {"config": {k: v for k, v in vars(args).items()}, "vocab": len(corpus.chars),
              "params": nparams, "rnnfast_backend": backend, "torch_version": torch.__version__,
              "wall_seconds": wall, "runs": {}}
    val_gen_seed = args.seed + 2
    for impl, tr in trainers.items():
        vgen = torch.Generator().manual_seed(val_gen_seed)
        val = None
        if args.eval_batches:
            val = tr.evaluate([corpus.batch(corpus.val, args.batch, args.seq_len, vgen)
                               for _ in range(args.eval_batches)])
        tps = tr.tokens_per_s(tok, args.warmup_steps)
        report["runs"][impl] = {"losses": tr.losses, "tokens_per_s": tps, "val_loss": val,
                                "step_ms_median": 1e3 * sorted(tr.step_s)[len(tr.step_s) // 2],
                                **tr.init_info}
        print(f"{impl:8s} final train loss {tr.losses[-1]:.4f}  val loss "
              f"{'-' if val is None else f'{val:.4f}'}  {tps:,.0f} tokens/s "
              f"(median step {report['runs'][impl]['step_ms_median']:.1f} ms)")
        if args.sample:
            print(f"--- {impl} sample ---\n{sample(tr, corpus, args.sample, args.seed)}\n---")
    if args.compare:
        a, b = trainers["torch"].losses, trainers["rnnfast"].losses
        diffs = [abs(u - v) for u, v in zip(a, b)]
        cmp = {
            "max_abs_loss_diff": max(diffs),
            "max_abs_loss_diff_first_10": max(diffs[:10]),
            "final_abs_loss_diff": diffs[-1],
            "step_of_max_diff": 1 + diffs.index(max(diffs)),
            "tokens_per_s_ratio_rnnfast_over_torch":
                report["runs"]["rnnfast"]["tokens_per_s"] / report["runs"]["torch"]["tokens_per_s"],
        }
        report["compare"] = cmp
        print(f"compare: max |loss_torch - loss_rnnfast| = {cmp['max_abs_loss_diff']:.3g} "
              f"(step {cmp['step_of_max_diff']}; first 10 steps {cmp['max_abs_loss_diff_first_10']:.3g}; "
              f"final {cmp['final_abs_loss_diff']:.3g}); tokens/s rnnfast/torch = "
              f"{cmp['tokens_per_s_ratio_rnnfast_over_torch']:.2f}x")
        if not all(math.isfinite(v) for v in a + b):
            print("WARNING: non-finite loss", file=sys.stderr)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
