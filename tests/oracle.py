"""Plain, loop-based implementations of DMW-LA and DS-GIM (docs/method.md), written for clarity rather
than speed.  They serve as independent oracles for the vectorised library code."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def memory_read(queries: torch.Tensor, bank: torch.Tensor, prototypes: torch.Tensor, pool_size: int) -> torch.Tensor:
    """Row by row: nearest prototype by cosine, softmax over that category's slots, read."""
    out = torch.zeros_like(queries)
    for i in range(queries.shape[0]):
        q = queries[i]
        cosines = [F.cosine_similarity(q, prototypes[:, c], dim=0) for c in range(prototypes.shape[1])]
        c = int(torch.stack(cosines).argmax())
        block = bank[:, c * pool_size : (c + 1) * pool_size]
        weights = torch.softmax(q @ block, dim=0)
        out[i] = block @ weights
    return out


def memory_update(bank, prototypes, keys, pool_size, k, momentum):
    """Returns (new bank, new prototypes, {category: (slots rewritten, positions used)})."""
    bank = bank.clone()
    num_k = prototypes.shape[1]
    category = [int((keys[i] @ prototypes).argmax()) for i in range(keys.shape[0])]
    chosen = {}
    for c in range(num_k):
        block = bank[:, c * pool_size : (c + 1) * pool_size]
        slot_score = torch.softmax(block, dim=1).sum(0)
        weakest = sorted(range(pool_size), key=lambda j: float(slot_score[j]))[:k]
        members = [i for i in range(keys.shape[0]) if category[i] == c]
        if not members:
            continue
        if len(members) < k:
            # the authors' replication to k candidates, with the extra copies (which they
            # draw at random) given to the best single positions
            score = torch.softmax(keys[members], dim=0).sum(1)
            by_score = [members[j] for j in sorted(range(len(members)), key=lambda j: -float(score[j]))]
            q, extra = divmod(k, len(members))
            members = [m for rank, m in enumerate(by_score) for _ in range(q + (rank < extra))]
        member_keys = keys[members]  # (n_c or k, d)
        score = torch.softmax(member_keys, dim=0).sum(1)
        ranked = [members[j] for j in sorted(range(len(members)), key=lambda j: -float(score[j]))]
        best = ranked[:k]
        for slot, position in zip(weakest, best):
            column = c * pool_size + slot
            bank[:, column] = (1 - momentum) * bank[:, column] + momentum * keys[position]
        chosen[c] = (sorted(c * pool_size + s for s in weakest), best)
    new_prototypes = torch.stack(
        [bank[:, c * pool_size : (c + 1) * pool_size].mean(1) for c in range(num_k)], dim=1
    )
    return bank, new_prototypes, chosen


def dsgim_attention(module, x: torch.Tensor, gamma: float) -> torch.Tensor:
    """DS-GIM of docs/method.md, one sample and one window at a time, with the module's weights."""
    outputs = []
    w = module.window
    for b in range(x.shape[0]):
        xi = x[b]
        c, h, wd = xi.shape
        ph, pw = -(-h // w) * w, -(-wd // w) * w
        padded = torch.zeros(c, ph, pw, dtype=x.dtype)
        padded[:, :h, :wd] = xi
        scores = []
        windows = []
        for r in range(ph // w):
            for s in range(pw // w):
                tokens = padded[:, r * w : (r + 1) * w, s * w : (s + 1) * w].reshape(c, -1).t()
                total = 0.0
                for i in range(tokens.shape[0]):
                    for j in range(i, tokens.shape[0]):
                        total += float(F.cosine_similarity(tokens[i], tokens[j], dim=0, eps=1e-8))
                scores.append(total)
                windows.append((r, s))
        top = sorted(range(len(scores)), key=lambda i: -scores[i])[: module.top_windows]
        coherent = torch.zeros(ph, pw, dtype=torch.bool)
        for i in top:
            r, s = windows[i]
            coherent[r * w : (r + 1) * w, s * w : (s + 1) * w] = True
        coherent = coherent[:h, :wd]
        w1 = torch.where(coherent, torch.tensor(gamma), torch.tensor(1.0))
        w2 = torch.where(coherent, torch.tensor(1.0), torch.tensor(gamma))
        q = module.query((xi * w1)[None])[0].reshape(c, -1).t()
        k = module.key((xi * w2)[None])[0].reshape(c, -1).t()
        v = module.value(xi[None])[0].reshape(c, -1).t()
        a = q @ k.t()
        n = a.shape[0]
        mean = a.mean(1)
        weights = torch.zeros_like(a)
        for i in range(n):
            dist = (mean[i] - mean).abs()
            threshold = torch.sort(dist, descending=True).values[max(n // 2, 1) - 1]
            far = dist >= threshold
            far[i] = True
            for mask in (far, ~far):
                if mask.any():
                    weights[i, mask] += torch.softmax(a[i, mask], dim=0)
        out = module.proj(weights @ v)
        outputs.append(module.refine(out.t().reshape(1, c, h, wd))[0])
    return torch.stack(outputs)


def authors_split_weights(scores: torch.Tensor) -> torch.Tensor:
    """The Euclidean part as the authors' code computes it, row by row: the near set compares
    the 0/1 far mask with the split point, and masked scores become -100 (as does any score
    that is exactly 0) before a softmax over the whole row."""
    batch, n, _ = scores.shape
    weights = torch.zeros_like(scores)
    for b in range(batch):
        a = scores[b]
        mean = a.mean(1)
        for i in range(n):
            dist = (mean[i] - mean).abs()
            split = float(torch.sort(dist, descending=True).values[n // 2 - 1])
            far = [float(dist[j]) + (10000.0 if j == i else 0.0) >= split for j in range(n)]
            near = [True] * n if split >= 1 else [not f for f in far]
            for mask in (far, near):
                kept = [float(a[i, j]) if m else 0.0 for j, m in enumerate(mask)]
                kept = torch.tensor([-100.0 if v == 0 else v for v in kept], dtype=scores.dtype)
                weights[b, i] += torch.softmax(kept, dim=0)
    return weights
