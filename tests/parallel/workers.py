"""Rank functions for the multi-process tests (importable by the spawned ranks)."""
import torch
import torch.distributed as dist
import torch.nn.functional as F

from fairseq_efficiency.parallel.pipeline import WavefrontPipeline
from fairseq_efficiency.parallel.seq2seq import HybridSeq2Seq

PAD = 1
VOCAB = 23


def tiny_model(layers=2, seed=0):
    torch.manual_seed(seed)
    return HybridSeq2Seq(VOCAB, VOCAB, PAD, embed_dim=6, hidden=8, layers=layers, dropout=0.0)


def ragged_batch(batch, src_len, tgt_len, seed=1):
    """Right-padded source/target of ragged lengths (at least one full-length row)."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, VOCAB, (batch, src_len), generator=g)
    tgt = torch.randint(4, VOCAB, (batch, tgt_len), generator=g)
    slen = torch.randint(1, src_len + 1, (batch,), generator=g)
    tlen = torch.randint(1, tgt_len + 1, (batch,), generator=g)
    slen[0], tlen[-1] = src_len, tgt_len
    for i in range(batch):
        src[i, slen[i]:] = PAD
        tgt[i, tlen[i]:] = PAD
    prev = torch.cat([torch.full((batch, 1), 2), tgt[:, :-1]], 1)
    prev = prev.masked_fill(tgt.eq(PAD), PAD)
    return src, prev, tgt


def loss_of(logits, target):
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1),
                           ignore_index=PAD, reduction="sum")


def reference(layers, batch_shape, seed=0):
    """Loss and gradients of the unchunked model in one process."""
    model = tiny_model(layers, seed)
    src, prev, tgt = ragged_batch(*batch_shape)
    logits, _ = model(src, prev, chunks=1)
    loss = loss_of(logits, tgt)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def owned_parameters(pipe):
    """Parameters a rank updates from its own computation (besides its head share)."""
    lo, hi = pipe.layer_range
    mods = [pipe.encoder.layers[i] for i in range(lo, hi)]
    mods += [pipe.decoder.layers[i] for i in range(lo, hi)]
    if pipe.stage == 0:
        mods += [pipe.encoder.embed_tokens, pipe.decoder.embed_tokens]
    return [p for m in mods for p in m.parameters()]


def pipeline_step(rank, world, layers, balance, chunks, batch_shape, seed=0):
    """One forward/backward of the wavefront pipeline; grads summed over ranks (all-reduce)."""
    model = tiny_model(layers, seed)
    src, prev, tgt = ragged_batch(*batch_shape)
    pipe = WavefrontPipeline(model.encoder, model.decoder, balance, chunks)
    logits, _, (lo, hi) = pipe(src, prev)
    loss = loss_of(logits, tgt[lo:hi])
    loss.backward()
    local = {n: (p.grad.clone() if p.grad is not None else None)
             for n, p in model.named_parameters()}
    total = loss.detach().clone()
    dist.all_reduce(total)
    grads = {}
    for n, p in model.named_parameters():
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        dist.all_reduce(g)
        grads[n] = g
    owned = {id(p) for p in owned_parameters(pipe)}
    owned_names = [n for n, p in model.named_parameters() if id(p) in owned]
    with torch.no_grad():  # evaluation path (no autograd boundary)
        logits_eval, _, _ = pipe(src, prev)
    return {"loss": total, "grads": grads, "local": local, "owned": owned_names,
            "share": (lo, hi), "eval_loss": loss_of(logits_eval, tgt[lo:hi])}


def pipeline_cases(rank, world, cases):
    """Run :func:`pipeline_step` for several (layers, balance, chunks, batch_shape) cases,
    plus the top-layer states of this rank's batch share."""
    out = []
    for layers, balance, chunks, shape in cases:
        res = pipeline_step(rank, world, layers, balance, chunks, shape)
        model = tiny_model(layers)
        src, prev, _ = ragged_batch(*shape)
        pipe = WavefrontPipeline(model.encoder, model.decoder, balance, chunks)
        with torch.no_grad():
            res["S_share"], res["H_share"], _ = pipe._forward(src, prev, keep=False)
        out.append(res)
    return out


def reference_states(layers, batch_shape, seed=0):
    model = tiny_model(layers, seed)
    src, prev, _ = ragged_batch(*batch_shape)
    with torch.no_grad():
        S, finals, _ = model.encoder(src, chunks=1)
        H = model.decoder.states(prev, finals, chunks=1)
    return S, H
