"""HybridNMT in plain PyTorch: stacked LSTMs without input feeding + a batched attention head.

Ono et al., "Hybrid Data-Model Parallel Training for Sequence-to-Sequence
Recurrent Neural Network Machine Translation" (HybridNMT), section 3.2:

* encoder and decoder are stacked LSTMs; the decoder has **no input feeding**,
  so every decoder state depends only on the state to its left and the one
  below it, and the stacks can be computed layer by layer, chunk by chunk
  (the wavefront of Figure 3, see :mod:`fairseq_efficiency.parallel.pipeline`);
* decoder layer ``l`` starts from encoder layer ``l``'s final ``(h, c)``;
* only when all top-layer states ``S`` (encoder) and ``H`` (decoder) exist,
  :class:`LuongAttentionHead` computes eq. 1-6 for all target positions at once.

Tensors inside the stacks are time-major ``[T, B, C]`` so a time chunk is a
contiguous slice (needed to send it between processes).  Source tokens are
*right*-padded here; each encoder chunk is run as a packed sequence so a
sentence's final state is the state at its last real token.

:class:`HybridSeq2Seq` (``input_feeding=True``) is also the paper's
HybridNMT-IF baseline (section 4; Luong et al. input feeding): its decoder
feeds the previous attentional state ``tanh(W_c[H;C])`` into layer 1 and must
therefore run step by step; it cannot be wavefront-pipelined.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from fairseq_efficiency.errors import PluginConfigError

State = Tuple[torch.Tensor, torch.Tensor]  # (h, c), each [B, H]


def check_chunks(chunks: int, what: str = "the number of time chunks") -> int:
    if chunks < 1:
        raise PluginConfigError(f"{what} must be >= 1, got {chunks}")
    return chunks


def chunk_bounds(length: int, chunks: int) -> List[Tuple[int, int]]:
    """Split ``range(length)`` into ``min(chunks, length)`` near-equal ``(start, end)`` pieces."""
    check_chunks(chunks)
    return batch_bounds(length, max(1, min(chunks, length)))


def batch_bounds(batch: int, shares: int) -> List[Tuple[int, int]]:
    """Split ``range(batch)`` into exactly ``shares`` near-equal pieces (some may be empty)."""
    base, extra = divmod(batch, shares)
    out, start = [], 0
    for i in range(shares):
        end = start + base + (1 if i < extra else 0)
        out.append((start, end))
        start = end
    return out


def make_embedding(num: int, dim: int, padding_idx: int) -> nn.Embedding:
    emb = nn.Embedding(num, dim, padding_idx=padding_idx)
    nn.init.uniform_(emb.weight, -0.1, 0.1)
    with torch.no_grad():
        emb.weight[padding_idx].zero_()
    return emb


def zero_state(layers: Sequence[nn.LSTM], batch: int, like: torch.Tensor) -> List[State]:
    return [(like.new_zeros(batch, l.hidden_size), like.new_zeros(batch, l.hidden_size))
            for l in layers]


class ChunkLengths:
    """Valid steps of every right-padded sentence inside one time chunk, on the CPU.

    Built once per chunk (see :func:`chunk_lengths`) and reused by every layer
    that runs the chunk, so the layers need no device synchronisation to decide
    how to pack it; ``index_on(device)`` copies the active rows' index to a
    device once.
    """

    def __init__(self, lengths: torch.Tensor, steps: int):
        active = lengths > 0
        self.n_active = int(active.sum())
        self.all_active = self.n_active == lengths.numel()
        self.full = self.all_active and bool((lengths == steps).all())  # nothing to pack
        if self.all_active:
            self.lengths, self._index = lengths, None
        else:  # only the sentences that still have tokens are run
            self.lengths, self._index = lengths[active], active.nonzero().squeeze(1)
        self._index_on: Dict[torch.device, torch.Tensor] = {}

    def index_on(self, device: torch.device) -> torch.Tensor:
        if device not in self._index_on:
            self._index_on[device] = self._index.to(device)
        return self._index_on[device]


def chunk_lengths(lengths: torch.Tensor, start: int, end: int) -> ChunkLengths:
    """Valid steps of each right-padded sentence inside time chunk ``[start, end)``.

    ``lengths`` (whole sentences) should already be on the CPU (one ``.cpu()``
    per batch, not per chunk).
    """
    return ChunkLengths((lengths.cpu() - start).clamp(min=0, max=end - start), end - start)


def run_layers(layers: Sequence[nn.LSTM], x: torch.Tensor, states: List[State],
               lengths: Optional[ChunkLengths] = None, dropout: float = 0.0,
               training: bool = False) -> Tuple[torch.Tensor, List[State]]:
    """Run consecutive single-layer LSTMs over one time chunk ``x`` [T, B, C].

    ``states`` holds each layer's incoming ``(h, c)``; the returned states are
    those after the chunk (the carry into the next chunk, so backprop through
    time continues across chunks).  With ``lengths`` (valid steps of every
    sentence *within this chunk*, right padding; see :func:`chunk_lengths`)
    each layer runs on the packed sequences of the sentences that still have
    tokens, and the others keep their state, so a sentence's final state is
    the one at its last token.  Dropout is applied to every layer's output
    (between layers and on top).
    """
    out_states = []
    for layer, (h, c) in zip(layers, states):
        if lengths is None:
            x, (hn, cn) = layer(x, (h.unsqueeze(0), c.unsqueeze(0)))
            hn, cn = hn.squeeze(0), cn.squeeze(0)
        else:
            x, hn, cn = _run_packed(layer, x, h, c, lengths)
        x = F.dropout(x, p=dropout, training=training)
        out_states.append((hn, cn))
    return x, out_states


def _run_packed(layer, x, h, c, lengths: ChunkLengths):
    t_len, batch = x.shape[0], x.shape[1]
    if lengths.n_active == 0:
        return x.new_zeros(t_len, batch, layer.hidden_size), h, c
    if lengths.full:
        out, (hn, cn) = layer(x, (h.unsqueeze(0), c.unsqueeze(0)))
        return out, hn.squeeze(0), cn.squeeze(0)
    if lengths.all_active:
        packed = pack_padded_sequence(x, lengths.lengths, enforce_sorted=False)
        out, (hn, cn) = layer(packed, (h.unsqueeze(0), c.unsqueeze(0)))
        out, _ = pad_packed_sequence(out, total_length=t_len)
        return out, hn.squeeze(0), cn.squeeze(0)
    idx = lengths.index_on(x.device)
    packed = pack_padded_sequence(x.index_select(1, idx), lengths.lengths, enforce_sorted=False)
    out, (hn, cn) = layer(packed, (h.index_select(0, idx).unsqueeze(0),
                                   c.index_select(0, idx).unsqueeze(0)))
    out, _ = pad_packed_sequence(out, total_length=t_len)
    full = x.new_zeros(t_len, batch, layer.hidden_size).index_copy(1, idx, out)
    return full, h.index_copy(0, idx, hn.squeeze(0)), c.index_copy(0, idx, cn.squeeze(0))


class LuongAttentionHead(nn.Module):
    """Global attention with the "general" score + context-decoded state + output layer.

    Eq. 2: ``alpha_hat = H^T W_alpha S``; eq. 1: ``alpha = softmax(alpha_hat)``
    over (non-padding) source positions; eq. 3: ``C = alpha S``; eq. 4:
    ``H_c = tanh(W_c [H; C])``; eq. 5: ``F_c(H_c)`` (logits; the criterion
    applies the softmax).  All target positions are computed in one batched
    call.  Rows of the batch are independent, which is what makes the head
    data-parallel (each device takes a share of the batch).
    """

    def __init__(self, hidden: int, vocab: int, dropout: float = 0.0,
                 out_embed: Optional[nn.Embedding] = None):
        super().__init__()
        self.W_alpha = nn.Linear(hidden, hidden, bias=False)
        self.W_c = nn.Linear(2 * hidden, hidden, bias=False)
        self.dropout = dropout
        if out_embed is not None:  # share the target embedding as F_c's weight
            self.F_c = nn.Linear(hidden, vocab, bias=False)
            self.F_c.weight = out_embed.weight
        else:
            self.F_c = nn.Linear(hidden, vocab)

    def attend(self, S: torch.Tensor, H: torch.Tensor, src_pad: Optional[torch.Tensor]):
        """``S`` [Ts, B, Hd], ``H`` [Tt, B, Hd] -> (``H_c`` [B, Tt, Hd], ``alpha`` [B, Tt, Ts])."""
        S_b = S.transpose(0, 1)
        H_b = H.transpose(0, 1)
        scores = torch.bmm(H_b, self.W_alpha(S_b).transpose(1, 2))  # eq. 2
        if src_pad is not None:
            scores = scores.masked_fill(src_pad.unsqueeze(1), float("-inf"))
        alpha = torch.softmax(scores.float(), dim=-1).type_as(scores)  # eq. 1
        context = torch.bmm(alpha, S_b)  # eq. 3
        H_c = torch.tanh(self.W_c(torch.cat([H_b, context], dim=-1)))  # eq. 4
        return H_c, alpha

    def forward(self, S, H, src_pad):
        H_c, alpha = self.attend(S, H, src_pad)
        H_c = F.dropout(H_c, p=self.dropout, training=self.training)
        return self.F_c(H_c), alpha  # eq. 5 (logits)


class _ChunkedStack(nn.Module):
    """What encoder and decoder share: ``embed_tokens`` + ``layers`` run chunk by chunk."""

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens`` [B, T] -> time-major embeddings [T, B, E] (with dropout)."""
        x = self.embed_tokens(tokens).transpose(0, 1)
        return F.dropout(x, p=self.dropout, training=self.training)

    def _run_chunks(self, tokens: torch.Tensor, states: List[State], chunks: int,
                    lengths: Optional[torch.Tensor] = None):
        """Embed and run ``tokens`` [B, T] chunk by chunk -> (top outputs [T, B, H], final states).

        ``lengths``: valid steps of every right-padded sentence (CPU), to pack the chunks.
        """
        outs = []
        for a, b in chunk_bounds(tokens.size(1), chunks):
            x, states = run_layers(self.layers, self.embed(tokens[:, a:b]), states,
                                   None if lengths is None else chunk_lengths(lengths, a, b),
                                   self.dropout, self.training)
            outs.append(x)
        return torch.cat(outs, 0), states


class HybridEncoder(_ChunkedStack):
    """Source embedding + stacked LSTM (one ``nn.LSTM`` per layer so layers can be placed)."""

    def __init__(self, vocab: int, embed_dim: int, hidden: int, layers: int,
                 padding_idx: int, dropout: float = 0.0):
        super().__init__()
        if layers < 1:
            raise PluginConfigError(f"encoder layers must be >= 1, got {layers}")
        self.padding_idx = padding_idx
        self.dropout = dropout
        self.embed_tokens = make_embedding(vocab, embed_dim, padding_idx)
        self.layers = nn.ModuleList(
            nn.LSTM(embed_dim if i == 0 else hidden, hidden) for i in range(layers))
        self.hidden_size = hidden

    def forward(self, src_tokens: torch.Tensor, chunks: int = 1):
        """Right-padded ``src_tokens`` [B, Ts] -> (``S`` [Ts, B, H], final states, pad mask [B, Ts])."""
        lengths = src_tokens.ne(self.padding_idx).sum(1).cpu()  # one transfer per batch
        states = zero_state(self.layers, src_tokens.size(0), self.embed_tokens.weight)
        S, states = self._run_chunks(src_tokens, states, chunks, lengths)
        return S, states, src_tokens.eq(self.padding_idx)


class HybridDecoder(_ChunkedStack):
    """Target embedding + stacked LSTM (no input feeding) + :class:`LuongAttentionHead`.

    With ``input_feeding=True`` this is HybridNMT-IF: layer 1 also receives the
    previous step's ``H_c`` and the decoder runs one step at a time.
    """

    def __init__(self, vocab: int, embed_dim: int, hidden: int, layers: int,
                 padding_idx: int, dropout: float = 0.0, input_feeding: bool = False,
                 share_input_output_embed: bool = False):
        super().__init__()
        if share_input_output_embed and embed_dim != hidden:
            raise PluginConfigError("sharing decoder input/output embeddings needs "
                                    f"decoder embed dim == hidden size ({embed_dim} != {hidden})")
        self.padding_idx = padding_idx
        self.dropout = dropout
        self.input_feeding = input_feeding
        self.hidden_size = hidden
        self.embed_tokens = make_embedding(vocab, embed_dim, padding_idx)
        first_in = embed_dim + (hidden if input_feeding else 0)
        self.layers = nn.ModuleList(
            nn.LSTM(first_in if i == 0 else hidden, hidden) for i in range(layers))
        self.head = LuongAttentionHead(hidden, vocab, dropout,
                                       self.embed_tokens if share_input_output_embed else None)

    def states(self, prev_output_tokens: torch.Tensor, init: List[State], chunks: int = 1):
        """All top-layer decoder states ``H`` [Tt, B, H] (no input feeding), time-chunked."""
        if self.input_feeding:
            raise PluginConfigError(
                "the input-feeding decoder (HybridNMT-IF) has no state-only pass")
        return self._run_chunks(prev_output_tokens, list(init), chunks)[0]

    def forward(self, prev_output_tokens, S, init: List[State], src_pad, chunks: int = 1):
        """Training/scoring forward: logits [B, Tt, V] and attention [B, Tt, Ts]."""
        if self.input_feeding:
            return self._forward_input_feeding(prev_output_tokens, S, init, src_pad)
        H = self.states(prev_output_tokens, init, chunks)
        return self.head(S, H, src_pad)

    def step(self, tokens: torch.Tensor, S, states: List[State], src_pad,
             prev_hc: Optional[torch.Tensor] = None):
        """One decoding step (incremental generation): ``tokens`` [B] ->
        (logits [B, 1, V], attention [B, 1, Ts], new states, new ``H_c`` [B, H])."""
        x = self.embed(tokens.unsqueeze(1))  # [1, B, E]
        if self.input_feeding:
            if prev_hc is None:
                prev_hc = x.new_zeros(tokens.size(0), self.hidden_size)
            x = torch.cat([x, prev_hc.unsqueeze(0)], dim=-1)
        H, states = run_layers(self.layers, x, states, None, self.dropout, self.training)
        H_c, alpha = self.head.attend(S, H, src_pad)
        H_c_d = F.dropout(H_c, p=self.dropout, training=self.training)
        return self.head.F_c(H_c_d), alpha, states, H_c.squeeze(1)

    def _forward_input_feeding(self, prev_output_tokens, S, init, src_pad):
        states, hc, logits, attn = list(init), None, [], []
        for t in range(prev_output_tokens.size(1)):
            lo, al, states, hc = self.step(prev_output_tokens[:, t], S, states, src_pad, hc)
            logits.append(lo)
            attn.append(al)
        return torch.cat(logits, 1), torch.cat(attn, 1)


class HybridSeq2Seq(nn.Module):
    """The whole HybridNMT model on one device (``chunks`` only changes the schedule)."""

    def __init__(self, src_vocab, tgt_vocab, padding_idx, embed_dim=512, hidden=1024, layers=4,
                 dropout=0.0, input_feeding=False, share_decoder_input_output_embed=False):
        super().__init__()
        self.encoder = HybridEncoder(src_vocab, embed_dim, hidden, layers, padding_idx, dropout)
        self.decoder = HybridDecoder(tgt_vocab, embed_dim, hidden, layers, padding_idx, dropout,
                                     input_feeding, share_decoder_input_output_embed)

    def forward(self, src_tokens, prev_output_tokens, chunks: int = 1):
        S, finals, src_pad = self.encoder(src_tokens, chunks)
        return self.decoder(prev_output_tokens, S, finals, src_pad, chunks)
