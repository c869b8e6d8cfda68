"""Wavefront model parallelism + data-parallel attention/softmax (HybridNMT, section 3.2, Fig. 3).

Two executions of the same :class:`~fairseq_efficiency.parallel.seq2seq.HybridSeq2Seq`
parameters:

:class:`WavefrontPipeline` (one process per device, ``torch.distributed``)
    Pipeline stage ``s`` owns encoder *and* decoder layers ``balance[:s] ..
    balance[:s+1]`` (the same depth on the same device, as in Fig. 3: decoder
    layer ``l`` starts from encoder layer ``l``'s final state, which stays
    local).  Stage 0 also embeds the tokens.  Both sentences are cut into
    ``chunks`` time chunks and each stage processes the sequence of work items
    ``enc chunk 0..C-1, dec chunk 0..C-1`` carrying every layer's ``(h, c)``
    from item to item; chunk outputs go to the next stage with ``isend`` as
    soon as they exist, so stage ``s`` works on item ``i`` while stage ``s+1``
    works on item ``i-1`` (the wavefront).  The last stage then scatters the
    top-layer states ``S`` and ``H`` by batch to every stage, and each computes
    attention, ``tanh(W_c[H;C])``, the output layer and the loss of its share
    (data parallelism).  Backward runs the mirror image: head gradients are
    gathered on the last stage, every stage backpropagates its items in
    reverse order (full backprop through time: the gradient of a chunk's final
    state flows into the previous chunk) and sends input gradients down.

    Gradients of a rank are those of its own layers and of its head share; a
    *sum* over ranks gives the full-batch gradient, which is exactly what
    fairseq's data-parallel all-reduce computes when every rank reports the
    sample size of its share.  ``world_size`` may be a multiple of the number
    of stages: ranks ``g*S .. g*S+S-1`` form pipeline group ``g`` (they must
    see the same batch), groups are data-parallel replicas.

:class:`DevicePipeline` (one process, several devices)
    Same schedule, issued in wavefront order from one thread; on CUDA devices
    kernels run asynchronously so the stages overlap.  The head runs on every
    device on its batch share (parameters replicated differentiably with
    ``Tensor.to``), and logits are gathered on the output device.
"""
import time
from typing import List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch.func import functional_call

from fairseq_efficiency.errors import PluginConfigError
from fairseq_efficiency.parallel.seq2seq import (
    HybridDecoder, HybridEncoder, batch_bounds, check_chunks, chunk_bounds, chunk_lengths,
    run_layers, zero_state,
)

# message tags: gloo pairs sends with receives by tag, NCCL by their order between two ranks
# (ignoring tags), so every receive is also posted in the order its peer sends
_FWD, _SCATTER_S, _SCATTER_H, _GATHER_S, _GATHER_H, _BWD = range(6)
_TAG_STRIDE = 1 << 16


def _tag(kind: int, item: int = 0) -> int:
    return kind * _TAG_STRIDE + item


def work_items(Ts: int, Tt: int, chunks: int) -> Tuple[List[Tuple[bool, int, int]], int]:
    """The schedule of every stage: ``(is_enc, start, end)`` for the source's time chunks,
    then the target's; and the number of source chunks."""
    enc = [(True, a, b) for a, b in chunk_bounds(Ts, chunks)]
    return enc + [(False, a, b) for a, b in chunk_bounds(Tt, chunks)], len(enc)


class _Stage:
    """What one stage kept of its forward for the backward pass."""

    def __init__(self, items, segments, share, S_shape, H_shape):
        self.items, self.segments, self.share = items, segments, share
        self.S_shape, self.H_shape = S_shape, H_shape


class _PipelineFunction(torch.autograd.Function):
    """Autograd boundary: forward runs the pipeline, backward runs its reverse schedule.

    Parameter gradients are accumulated directly (``torch.autograd.backward``
    on each work item's own graph) so no gradient is returned for inputs.
    """

    @staticmethod
    def forward(ctx, pipe, _anchor, src_tokens, prev_output_tokens):
        with torch.enable_grad():
            S_share, H_share, run = pipe._forward(src_tokens, prev_output_tokens, keep=True)
        ctx.pipe, ctx.run = pipe, run
        return S_share.detach(), H_share.detach()

    @staticmethod
    def backward(ctx, grad_S, grad_H):
        ctx.pipe._backward(ctx.run, grad_S, grad_H)
        ctx.run = None
        return None, None, None, None


def check_wavefront_decoder(decoder):
    """The decoder must have no input feeding to be computed chunk by chunk."""
    if decoder.input_feeding:
        raise PluginConfigError("--input-feeding (HybridNMT-IF) cannot be wavefront-pipelined: "
                                "each decoder step needs the previous step's attention output")


def check_pipeline(encoder, decoder, balance, chunks):
    """Validate a wavefront placement; return the parsed per-stage layer counts."""
    check_wavefront_decoder(decoder)
    num_layers = len(encoder.layers)
    if num_layers != len(decoder.layers):
        raise PluginConfigError("hybrid_lstm needs as many decoder as encoder layers")
    check_chunks(chunks, "--pipeline-chunks")
    balance = [int(b) for b in balance]
    if any(b < 1 for b in balance) or sum(balance) != num_layers:
        raise PluginConfigError(
            f"pipeline balance {balance} must list >= 1 layers per stage summing "
            f"to the {num_layers} layers of the model")
    return balance


class WavefrontPipeline:
    """Multi-process HybridNMT execution (see module docstring).

    Args:
        encoder, decoder: the full model on every rank (each rank only runs its layers).
        balance: layers per stage, e.g. ``[2, 2]`` (same split for encoder and decoder).
        chunks: number of time chunks per sentence side.
    """

    def __init__(self, encoder: HybridEncoder, decoder: HybridDecoder, balance: Sequence[int],
                 chunks: int = 1, rank: Optional[int] = None, world_size: Optional[int] = None):
        self.encoder, self.decoder = encoder, decoder
        self.balance = check_pipeline(encoder, decoder, balance, chunks)
        self.chunks = chunks
        self.rank = dist.get_rank() if rank is None else rank
        self.world_size = dist.get_world_size() if world_size is None else world_size
        self.num_stages = len(self.balance)
        if self.world_size % self.num_stages:
            raise PluginConfigError(f"world size {self.world_size} is not a multiple of the "
                                    f"{self.num_stages} pipeline stages")
        self.stage = self.rank % self.num_stages
        base = self.rank - self.stage
        self.ranks = list(range(base, base + self.num_stages))  # this pipeline group
        self.prev_rank = self.ranks[self.stage - 1] if self.stage > 0 else None
        self.next_rank = self.ranks[self.stage + 1] if not self.is_last else None
        lo = sum(self.balance[:self.stage])
        self.layer_range = (lo, lo + self.balance[self.stage])
        self.wait_s = 0.0  # time blocked on other ranks (pipeline bubbles + transfers)

    def _wait(self, work):
        t0 = time.perf_counter()
        work.wait()
        self.wait_s += time.perf_counter() - t0

    def pop_wait(self) -> float:
        """Seconds spent waiting for other ranks since the last call."""
        w, self.wait_s = self.wait_s, 0.0
        return w

    @property
    def is_last(self):
        return self.stage == self.num_stages - 1

    def share(self, batch: int):
        """``(lo, hi)``: the batch rows whose attention/softmax this rank computes."""
        return batch_bounds(batch, self.num_stages)[self.stage]

    # -------------------------------------------------------------------------------
    def __call__(self, src_tokens, prev_output_tokens):
        """Right-padded ``src_tokens`` [B, Ts], ``prev_output_tokens`` [B, Tt] ->
        (logits [b, Tt, V], attention [b, Tt, Ts], (lo, hi)) for this rank's share."""
        if torch.is_grad_enabled():
            anchor = torch.empty(0, requires_grad=True)
            S_share, H_share = _PipelineFunction.apply(self, anchor, src_tokens,
                                                        prev_output_tokens)
        else:
            S_share, H_share, _ = self._forward(src_tokens, prev_output_tokens, keep=False)
        lo, hi = self.share(src_tokens.size(0))
        src_pad = src_tokens[lo:hi].eq(self.encoder.padding_idx)
        logits, attn = self.decoder.head(S_share, H_share, src_pad)
        return logits, attn, (lo, hi)

    def _forward(self, src_tokens, prev_output_tokens, keep):
        enc, dec = self.encoder, self.decoder
        B, Ts, Tt = src_tokens.size(0), src_tokens.size(1), prev_output_tokens.size(1)
        hidden = enc.hidden_size
        weight = enc.embed_tokens.weight
        items, n_enc = work_items(Ts, Tt, self.chunks)
        lengths = src_tokens.ne(enc.padding_idx).sum(1).cpu()  # one transfer per batch
        lo, hi = self.layer_range
        enc_layers, dec_layers = enc.layers[lo:hi], dec.layers[lo:hi]
        prev_rank, next_rank = self.prev_rank, self.next_rank

        bufs, recvs = [], []
        if prev_rank is not None:  # post every receive up front
            for i, (_, a, b) in enumerate(items):
                buf = weight.new_empty(b - a, B, hidden)
                bufs.append(buf)
                recvs.append(dist.irecv(buf, src=prev_rank, tag=_tag(_FWD, i)))
        sends, segments, tops = [], [], []
        states = zero_state(enc_layers, B, weight)
        for i, (is_enc, a, b) in enumerate(items):
            layers = enc_layers if is_enc else dec_layers
            module = enc if is_enc else dec
            x_in = None
            if prev_rank is not None:
                self._wait(recvs[i])
                x_in = bufs[i].requires_grad_(keep)
            st_in = [(h.detach().requires_grad_(keep), c.detach().requires_grad_(keep))
                     for h, c in states]
            with torch.set_grad_enabled(keep):
                if x_in is None:
                    tokens = src_tokens if is_enc else prev_output_tokens
                    x = module.embed(tokens[:, a:b])
                else:
                    x = x_in
                out, st_out = run_layers(layers, x, st_in,
                                         chunk_lengths(lengths, a, b) if is_enc else None,
                                         module.dropout, module.training)
            if keep:
                segments.append((x_in, st_in, out, st_out))
            if next_rank is not None:
                msg = out.detach().contiguous()
                sends.append((dist.isend(msg, dst=next_rank, tag=_tag(_FWD, i)), msg))
            else:
                tops.append(out.detach())
            states = st_out

        shares = batch_bounds(B, self.num_stages)
        s_lo, s_hi = shares[self.stage]
        if self.is_last:
            S_full, H_full = torch.cat(tops[:n_enc], 0), torch.cat(tops[n_enc:], 0)
            for r, (a, b) in enumerate(shares[:-1]):
                if b > a:
                    for kind, full in ((_SCATTER_S, S_full), (_SCATTER_H, H_full)):
                        msg = full[:, a:b].contiguous()
                        sends.append((dist.isend(msg, dst=self.ranks[r], tag=_tag(kind)), msg))
            S_share, H_share = S_full[:, s_lo:s_hi], H_full[:, s_lo:s_hi]
        else:
            S_share = weight.new_zeros(Ts, s_hi - s_lo, hidden)
            H_share = weight.new_zeros(Tt, s_hi - s_lo, hidden)
            if s_hi > s_lo:
                works = [dist.irecv(S_share, src=self.ranks[-1], tag=_tag(_SCATTER_S)),
                         dist.irecv(H_share, src=self.ranks[-1], tag=_tag(_SCATTER_H))]
                for w in works:
                    self._wait(w)
        for w, _ in sends:
            self._wait(w)
        run = _Stage(items, segments, shares, (Ts, B, hidden), (Tt, B, hidden)) if keep else None
        return S_share, H_share, run

    def _backward(self, run: _Stage, grad_S, grad_H):
        items, segments, shares = run.items, run.segments, run.share
        s_lo, s_hi = shares[self.stage]
        prev_rank, next_rank = self.prev_rank, self.next_rank
        sends = []
        if self.is_last:  # gather the head gradients of every share
            gS = grad_S.new_zeros(run.S_shape)
            gH = grad_H.new_zeros(run.H_shape)
            gS[:, s_lo:s_hi] = grad_S
            gH[:, s_lo:s_hi] = grad_H
            pending = []
            for r, (a, b) in enumerate(shares[:-1]):
                if b > a:
                    bs = grad_S.new_empty(run.S_shape[0], b - a, run.S_shape[2])
                    bh = grad_H.new_empty(run.H_shape[0], b - a, run.H_shape[2])
                    pending.append((dist.irecv(bs, src=self.ranks[r], tag=_tag(_GATHER_S)), bs, a, b, gS))
                    pending.append((dist.irecv(bh, src=self.ranks[r], tag=_tag(_GATHER_H)), bh, a, b, gH))
            for w, buf, a, b, full in pending:
                self._wait(w)
                full[:, a:b] = buf
        elif s_hi > s_lo:
            for kind, g in ((_GATHER_S, grad_S), (_GATHER_H, grad_H)):
                msg = g.contiguous()
                sends.append((dist.isend(msg, dst=self.ranks[-1], tag=_tag(kind)), msg))

        bufs, recvs = {}, {}
        if next_rank is not None:
            hidden = run.S_shape[2]
            # posted in the order the next stage sends them (last item first): NCCL pairs
            # point-to-point messages by their order between two ranks, not by tag
            for i in reversed(range(len(items))):
                _, a, b = items[i]
                buf = grad_S.new_empty(b - a, run.S_shape[1], hidden)
                bufs[i] = buf
                recvs[i] = dist.irecv(buf, src=next_rank, tag=_tag(_BWD, i))

        g_state = None
        for i in reversed(range(len(items))):
            is_enc, a, b = items[i]
            x_in, st_in, out, st_out = segments[i]
            if self.is_last:
                g_out = gS[a:b] if is_enc else gH[a:b]
            else:
                self._wait(recvs[i])
                g_out = bufs[i]
            tensors, grads = [out], [g_out]
            if g_state is not None:
                for (h, c), (gh, gc) in zip(st_out, g_state):
                    tensors += [h, c]
                    grads += [gh, gc]
            pairs = [(t, g) for t, g in zip(tensors, grads) if g is not None and t.requires_grad]
            if pairs:
                torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])
            if prev_rank is not None:
                g_in = x_in.grad if x_in.grad is not None else torch.zeros_like(x_in)
                msg = g_in.contiguous()
                sends.append((dist.isend(msg, dst=prev_rank, tag=_tag(_BWD, i)), msg))
            g_state = [(h.grad, c.grad) for h, c in st_in]
        for w, _ in sends:
            self._wait(w)


class DevicePipeline:
    """Single-process HybridNMT over several devices (see module docstring).

    Args:
        encoder, decoder: the model; :meth:`place` moves its parts.
        balance: layers per stage (same for encoder and decoder).
        devices: one device per stage (``torch.device`` or strings; ``"cpu"`` allowed).
        chunks: time chunks per sentence side.
        output_device: where logits are gathered (default: the last stage's device).
    """

    def __init__(self, encoder: HybridEncoder, decoder: HybridDecoder, balance: Sequence[int],
                 devices: Sequence, chunks: int = 1, output_device=None):
        self.encoder, self.decoder = encoder, decoder
        self.balance = check_pipeline(encoder, decoder, balance, chunks)
        if len(devices) != len(self.balance):
            raise PluginConfigError(
                f"{len(devices)} pipeline devices for {len(self.balance)} stages")
        self.devices = [torch.device(d) for d in devices]
        self.output_device = torch.device(output_device) if output_device is not None \
            else self.devices[-1]
        self.chunks = chunks
        self.stage_of_layer = [s for s, n in enumerate(self.balance) for _ in range(n)]
        # one head share per distinct device, in stage order
        self.head_devices = list(dict.fromkeys(self.devices))
        if decoder.head.F_c.weight is decoder.embed_tokens.weight and \
                self.output_device != self.devices[0]:
            raise PluginConfigError(
                "shared decoder input/output embeddings need the first stage and "
                "the output on the same device")

    def place(self):
        """Move every layer to its stage's device (embeddings: stage 0, head: output device)."""
        enc, dec = self.encoder, self.decoder
        enc.embed_tokens.to(self.devices[0])
        dec.embed_tokens.to(self.devices[0])
        for l, s in enumerate(self.stage_of_layer):
            enc.layers[l].to(self.devices[s])
            dec.layers[l].to(self.devices[s])
        dec.head.to(self.output_device)
        return self

    def __call__(self, src_tokens, prev_output_tokens):
        """Right-padded tokens -> (logits [B, Tt, V], attention [B, Tt, Ts]) on the output device."""
        enc, dec = self.encoder, self.decoder
        n_stages = len(self.balance)
        B = src_tokens.size(0)
        src_tokens = src_tokens.to(self.devices[0])
        prev_output_tokens = prev_output_tokens.to(self.devices[0])
        lengths = src_tokens.ne(enc.padding_idx).sum(1).cpu()  # one transfer per batch
        items, n_enc = work_items(src_tokens.size(1), prev_output_tokens.size(1), self.chunks)
        # packing plan of each source chunk, shared by the stages
        plans = [chunk_lengths(lengths, a, b) if is_enc else None for is_enc, a, b in items]
        firsts = [sum(self.balance[:s]) for s in range(n_stages)]
        states = [zero_state(enc.layers[f:f + n], B, enc.layers[f].weight_hh_l0)
                  for f, n in zip(firsts, self.balance)]
        outs = [[None] * len(items) for _ in range(n_stages)]
        # issue work in wavefront order: step k runs item k - s on stage s
        for k in range(len(items) + n_stages - 1):
            for s in range(n_stages):
                i = k - s
                if not 0 <= i < len(items):
                    continue
                is_enc, a, b = items[i]
                module = enc if is_enc else dec
                f, n = firsts[s], self.balance[s]
                if s == 0:
                    tokens = src_tokens if is_enc else prev_output_tokens
                    x = module.embed(tokens[:, a:b])
                else:
                    x = outs[s - 1][i].to(self.devices[s], non_blocking=True)
                    outs[s - 1][i] = None
                out, states[s] = run_layers(module.layers[f:f + n], x, states[s], plans[i],
                                            module.dropout, module.training)
                outs[s][i] = out
        S = torch.cat(outs[-1][:n_enc], 0)
        H = torch.cat(outs[-1][n_enc:], 0)
        src_pad = src_tokens.eq(enc.padding_idx)
        return self._head(S, H, src_pad)

    def _head(self, S, H, src_pad):
        """Data-parallel attention + softmax: one batch share per device."""
        head = self.decoder.head
        params = dict(head.named_parameters())
        logits, attn = [], []
        for dev, (a, b) in zip(self.head_devices, batch_bounds(S.size(1), len(self.head_devices))):
            if b <= a:
                continue
            replica = {k: v.to(dev) for k, v in params.items()}
            lo, al = functional_call(head, replica, (S[:, a:b].to(dev), H[:, a:b].to(dev),
                                                     src_pad[a:b].to(dev)))
            logits.append(lo.to(self.output_device))
            attn.append(al.to(self.output_device))
        return torch.cat(logits, 0), torch.cat(attn, 0)
