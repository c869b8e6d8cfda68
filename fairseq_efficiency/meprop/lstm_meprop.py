"""``lstm_meprop``: fairseq's LSTM encoder-decoder with meProp LSTM layers.

Same architecture, fields and defaults as fairseq's (legacy, argparse) ``lstm``
model, as a dataclass-configured model (so ``fairseq-hydra-train`` works),
with every LSTM layer of the encoder and decoder replaced by
:class:`~fairseq_efficiency.meprop.MePropLSTMCell` (top-k of the gate
gradients, section 2.3.2). Embeddings, attention and the output projection /
softmax keep dense back propagation (section 2.3.1).

``--meprop-alternate`` applies top-k to the encoder in odd epochs and to the
decoder in even epochs (section 3.3.3); the epoch reaches the model through
:meth:`set_epoch`, called by the ``translation_efficiency`` task at each
epoch start.

meSimp (Algorithm 2) removes hidden units physically; encoder final states
travel to the decoder in the original unit space (``unit_ids`` buffers), the
encoder's last layer shrinks the attention projections with it, and
:meth:`load_state_dict` adopts the shrunken shapes of a checkpoint.
"""
import logging
from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
import torch.nn as nn
from fairseq import utils
from fairseq.dataclass import FairseqDataclass
from fairseq.models import FairseqEncoderDecoderModel, register_model
from fairseq.models.lstm import Embedding, LSTMDecoder, LSTMEncoder
from omegaconf import II
from torch import Tensor

from fairseq_efficiency.errors import PluginConfigError, user_errors
from fairseq_efficiency.meprop import MePropLSTM, MePropLSTMCell, check_mode, parse_k
from fairseq_efficiency.meprop.topk import dense_layers
from fairseq_efficiency.meprop.mesimp import (
    Slice, group_tensor_names, lstm_cell_group, offset, resize_to_state_dict,
)

logger = logging.getLogger(__name__)


@dataclass
class MePropModelConfig(FairseqDataclass):
    """meProp options shared by ``lstm_meprop`` and ``transformer_meprop``."""

    meprop_k: float = field(default=0.0625, metadata={
        "help": "top-k of the output gradient kept per backward: a ratio of the layer size if "
                "< 1, else an absolute count (paper: 6.25%% of the hidden layers for NMT)"})
    meprop_mode: str = field(default="unified", metadata={
        "help": "unified: one top-k set per minibatch (fast, section 3.3.1); "
                "per-example: top-k per example (eq. 5-6)"})
    meprop_alternate: bool = field(default=False, metadata={
        "help": "top-k on the encoder in odd epochs and on the decoder in even epochs "
                "(section 3.3.3); the other side backpropagates densely"})


def check_meprop_cfg(cfg):
    """Validate the meProp flags; return the parsed k."""
    k = parse_k(cfg.meprop_k)
    check_mode(cfg.meprop_mode)
    return k


@dataclass
class LSTMMePropConfig(MePropModelConfig):
    dropout: float = field(default=0.1, metadata={"help": "dropout probability"})
    encoder_embed_dim: int = field(default=512, metadata={"help": "encoder embedding dimension"})
    encoder_freeze_embed: bool = field(default=False, metadata={"help": "freeze encoder embeddings"})
    encoder_hidden_size: int = field(default=512, metadata={"help": "encoder hidden size"})
    encoder_layers: int = field(default=1, metadata={"help": "number of encoder layers"})
    encoder_bidirectional: bool = field(default=False, metadata={
        "help": "make all layers of encoder bidirectional"})
    encoder_dropout_in: Optional[float] = field(default=None, metadata={
        "help": "dropout probability for encoder input embedding (default: --dropout)"})
    encoder_dropout_out: Optional[float] = field(default=None, metadata={
        "help": "dropout probability for encoder output (default: --dropout)"})
    decoder_embed_dim: int = field(default=512, metadata={"help": "decoder embedding dimension"})
    decoder_freeze_embed: bool = field(default=False, metadata={"help": "freeze decoder embeddings"})
    decoder_hidden_size: int = field(default=512, metadata={"help": "decoder hidden size"})
    decoder_layers: int = field(default=1, metadata={"help": "number of decoder layers"})
    decoder_out_embed_dim: int = field(default=512, metadata={
        "help": "decoder output embedding dimension"})
    decoder_attention: str = field(default="1", metadata={"help": "decoder attention"})
    decoder_dropout_in: Optional[float] = field(default=None, metadata={
        "help": "dropout probability for decoder input embedding (default: --dropout)"})
    decoder_dropout_out: Optional[float] = field(default=None, metadata={
        "help": "dropout probability for decoder output (default: --dropout)"})
    share_decoder_input_output_embed: bool = field(default=False, metadata={
        "help": "share decoder input and output embeddings"})
    share_all_embeddings: bool = field(default=False, metadata={
        "help": "share encoder, decoder and output embeddings (requires shared dictionary and "
                "embed dim)"})
    max_source_positions: int = II("task.max_source_positions")
    max_target_positions: int = II("task.max_target_positions")


def _set_topk(module: nn.Module, on: bool):
    for m in module.modules():
        if hasattr(m, "topk_enabled"):
            m.topk_enabled = on


class MePropLSTMEncoder(LSTMEncoder):
    """fairseq's ``LSTMEncoder`` running :class:`MePropLSTM` (masked, not packed)."""

    def __init__(self, *args, k=0.0625, mode="unified", **kwargs):
        super().__init__(*args, **kwargs)
        self.lstm = MePropLSTM.from_lstm(self.lstm, k=k, mode=mode)

    def forward(self, src_tokens: Tensor, src_lengths: Tensor, enforce_sorted: bool = True):
        if self.left_pad:
            src_tokens = utils.convert_padding_direction(
                src_tokens, torch.zeros_like(src_tokens).fill_(self.padding_idx), left_to_right=True)
        bsz, seqlen = src_tokens.size()
        x = self.dropout_in_module(self.embed_tokens(src_tokens)).transpose(0, 1)
        # final states come back in the original unit space (meSimp may remove units)
        x, (final_h, final_c) = self.lstm(x, lengths=src_lengths)
        x = self.dropout_out_module(x)
        if self.bidirectional:
            final_h = self.combine_bidir(final_h, bsz)
            final_c = self.combine_bidir(final_c, bsz)
        encoder_padding_mask = src_tokens.eq(self.padding_idx).t()
        return tuple((x, final_h, final_c, encoder_padding_mask))



class MePropLSTMDecoder(LSTMDecoder):
    """fairseq's ``LSTMDecoder`` with :class:`MePropLSTMCell` layers.

    The incremental cache keeps hidden/cell states in the original unit space
    so that layers simplified to different sizes still stack.
    """

    def __init__(self, *args, k=0.0625, mode="unified", **kwargs):
        super().__init__(*args, **kwargs)
        self.layers = nn.ModuleList(
            [MePropLSTMCell.from_lstm_cell(c, k=k, mode=mode) for c in self.layers])

    def extract_features(self, prev_output_tokens, encoder_out=None, incremental_state=None):
        if encoder_out is not None:
            encoder_outs, encoder_hiddens, encoder_cells, encoder_padding_mask = encoder_out[:4]
        else:
            encoder_outs = encoder_hiddens = encoder_cells = encoder_padding_mask = torch.empty(0)
        srclen = encoder_outs.size(0)
        if incremental_state is not None and len(incremental_state) > 0:
            prev_output_tokens = prev_output_tokens[:, -1:]
        bsz, seqlen = prev_output_tokens.size()
        x = self.dropout_in_module(self.embed_tokens(prev_output_tokens)).transpose(0, 1)

        if incremental_state is not None and len(incremental_state) > 0:
            prev_hiddens, prev_cells, input_feed = self.get_cached_state(incremental_state)
        elif encoder_out is not None:
            prev_hiddens = [encoder_hiddens[i] for i in range(self.num_layers)]
            prev_cells = [encoder_cells[i] for i in range(self.num_layers)]
            if self.encoder_hidden_proj is not None:
                prev_hiddens = [self.encoder_hidden_proj(y) for y in prev_hiddens]
                prev_cells = [self.encoder_cell_proj(y) for y in prev_cells]
            input_feed = x.new_zeros(bsz, self.hidden_size)
        else:
            zero = x.new_zeros(bsz, self.hidden_size)
            prev_hiddens = [zero for _ in range(self.num_layers)]
            prev_cells = [zero for _ in range(self.num_layers)]
            input_feed = None
        # original unit space -> each layer's current units
        prev_hiddens = [c.select_state(h) for h, c in zip(prev_hiddens, self.layers)]
        prev_cells = [c.select_state(h) for h, c in zip(prev_cells, self.layers)]

        attn_scores: Optional[Tensor] = (
            x.new_zeros(srclen, seqlen, bsz) if self.attention is not None else None)
        outs = []
        for j in range(seqlen):
            inp = torch.cat((x[j, :, :], input_feed), dim=1) if input_feed is not None else x[j]
            for i, rnn in enumerate(self.layers):
                hidden, cell = rnn(inp, (prev_hiddens[i], prev_cells[i]))
                inp = self.dropout_out_module(hidden)
                prev_hiddens[i] = hidden
                prev_cells[i] = cell
            if self.attention is not None:
                out, attn_scores[:, j, :] = self.attention(hidden, encoder_outs, encoder_padding_mask)
            else:
                out = hidden
            out = self.dropout_out_module(out)
            if input_feed is not None:
                input_feed = out
            outs.append(out)

        cache_state = torch.jit.annotate(Dict[str, Optional[Tensor]], {
            "prev_hiddens": torch.stack([c.expand_state(h, self.hidden_size)
                                         for h, c in zip(prev_hiddens, self.layers)]),
            "prev_cells": torch.stack([c.expand_state(h, self.hidden_size)
                                       for h, c in zip(prev_cells, self.layers)]),
            "input_feed": input_feed,
        })
        self.set_incremental_state(incremental_state, "cached_state", cache_state)
        x = torch.cat(outs, dim=0).view(seqlen, bsz, -1).transpose(1, 0)
        if hasattr(self, "additional_fc") and self.adaptive_softmax is None:
            x = self.dropout_out_module(self.additional_fc(x))
        if not self.training and self.need_attn and self.attention is not None:
            attn_scores = attn_scores.transpose(0, 2)
        else:
            attn_scores = None
        return x, attn_scores


class MePropModelMixin:
    """Alternation (section 3.3.3), meSimp groups and shape-adopting checkpoint loading."""

    _epoch_signal = False  # True once a task calls set_epoch (translation_efficiency does)

    def set_epoch(self, epoch):
        super().set_epoch(epoch)
        self._epoch_signal = True
        self.apply_alternation(epoch)

    def apply_alternation(self, epoch):
        """Odd epochs: top-k in the encoder only; even epochs: decoder only."""
        if self.meprop_cfg.meprop_alternate:
            _set_topk(self.encoder, epoch % 2 == 1)
            _set_topk(self.decoder, epoch % 2 == 0)
            logger.info("meProp epoch %d: top-k in the %s", epoch,
                        "encoder" if epoch % 2 == 1 else "decoder")

    def forward(self, *args, **kwargs):
        if self.training and self.meprop_cfg.meprop_alternate and not self._epoch_signal:
            with user_errors():  # fairseq's trainer calls this first
                raise PluginConfigError(
                    "--meprop-alternate needs --task translation_efficiency for training "
                    "(it provides the epoch signal); generation works with any task")
        return super().forward(*args, **kwargs)

    def warn_dense_layers(self):
        """One warning (at build time) naming the layers that ``--meprop-k`` does not sparsify
        because it is not smaller than the layer; returns them."""
        dense = dense_layers(self)
        if dense:
            logger.warning("--meprop-k %g keeps every unit of %s: these layers back-propagate "
                           "densely (no meProp)", self.meprop_cfg.meprop_k,
                           ", ".join(f"{name} ({units} units)" for name, units in dense))
        return dense

    def mesimp_groups(self):
        raise NotImplementedError

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        try:
            names = group_tensor_names(self, self.mesimp_groups())
        except ValueError:
            names = []
        resized = resize_to_state_dict(self, state_dict, names)
        if resized:
            logger.info("meSimp checkpoint: adopted %d shrunken tensor shapes", len(resized))
        return super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)


@register_model("lstm_meprop", dataclass=LSTMMePropConfig)
class LSTMMePropModel(MePropModelMixin, FairseqEncoderDecoderModel):
    def __init__(self, cfg, encoder, decoder):
        super().__init__(encoder, decoder)
        self.cfg = cfg
        self.meprop_cfg = cfg

    @classmethod
    @user_errors()
    def build_model(cls, cfg, task):
        k = check_meprop_cfg(cfg)
        if cfg.encoder_layers != cfg.decoder_layers:
            raise PluginConfigError("--encoder-layers must match --decoder-layers")

        def drop(v):
            return cfg.dropout if v is None else v

        enc_embed = Embedding(len(task.source_dictionary), cfg.encoder_embed_dim,
                              task.source_dictionary.pad())
        if cfg.share_all_embeddings:
            if task.source_dictionary != task.target_dictionary:
                raise PluginConfigError("--share-all-embeddings requires a joint dictionary")
            if cfg.encoder_embed_dim != cfg.decoder_embed_dim:
                raise PluginConfigError(
                    "--share-all-embeddings requires --encoder-embed-dim to match "
                    "--decoder-embed-dim")
            dec_embed = enc_embed
        else:
            dec_embed = None
        share_io = cfg.share_decoder_input_output_embed or cfg.share_all_embeddings
        if share_io and cfg.decoder_embed_dim != cfg.decoder_out_embed_dim:
            raise PluginConfigError("--share-decoder-input-output-embeddings requires "
                                    "--decoder-embed-dim to match --decoder-out-embed-dim")
        if cfg.encoder_freeze_embed:
            enc_embed.weight.requires_grad = False
        encoder = MePropLSTMEncoder(
            dictionary=task.source_dictionary, embed_dim=cfg.encoder_embed_dim,
            hidden_size=cfg.encoder_hidden_size, num_layers=cfg.encoder_layers,
            dropout_in=drop(cfg.encoder_dropout_in), dropout_out=drop(cfg.encoder_dropout_out),
            bidirectional=cfg.encoder_bidirectional, pretrained_embed=enc_embed,
            max_source_positions=cfg.max_source_positions, k=k, mode=cfg.meprop_mode)
        decoder = MePropLSTMDecoder(
            dictionary=task.target_dictionary, embed_dim=cfg.decoder_embed_dim,
            hidden_size=cfg.decoder_hidden_size, out_embed_dim=cfg.decoder_out_embed_dim,
            num_layers=cfg.decoder_layers, dropout_in=drop(cfg.decoder_dropout_in),
            dropout_out=drop(cfg.decoder_dropout_out),
            attention=utils.eval_bool(cfg.decoder_attention),
            encoder_output_units=encoder.output_units, pretrained_embed=dec_embed,
            share_input_output_embed=share_io, max_target_positions=cfg.max_target_positions,
            residuals=False, k=k, mode=cfg.meprop_mode)
        if cfg.decoder_freeze_embed:
            decoder.embed_tokens.weight.requires_grad = False
        model = cls(cfg, encoder, decoder)
        if cfg.meprop_alternate:
            model.apply_alternation(1)
        model.warn_dense_layers()
        return model

    def mesimp_groups(self):
        """Every LSTM layer's hidden units (gates jointly), with their consumers."""
        enc, dec = self.encoder, self.decoder
        if enc.bidirectional or dec.attention is None or dec.encoder_hidden_proj is not None:
            raise PluginConfigError("meSimp on lstm_meprop needs a unidirectional encoder, decoder "
                                    "attention and --encoder-hidden-size == --decoder-hidden-size")
        ecells, dcells = list(enc.lstm.cells), list(dec.layers)
        att = dec.attention
        groups = []
        for i, cell in enumerate(ecells):
            if i + 1 < len(ecells):
                cons = [Slice(ecells[i + 1], "weight_ih", 1)]
            else:  # encoder outputs feed the attention
                cons = [Slice(att.input_proj, "weight", 0),
                        Slice(att.output_proj, "weight", 1, offset(lambda: 0))]
                if att.input_proj.bias is not None:
                    cons.append(Slice(att.input_proj, "bias", 0))
            groups.append(lstm_cell_group(f"encoder.{i}", cell, cons))
        last_enc = ecells[-1]
        for i, cell in enumerate(dcells):
            if i + 1 < len(dcells):
                cons = [Slice(dcells[i + 1], "weight_ih", 1)]
            else:  # the top hidden state queries the attention
                cons = [Slice(att.input_proj, "weight", 1),
                        Slice(att.output_proj, "weight", 1,
                              offset(lambda: last_enc.hidden_size))]
            groups.append(lstm_cell_group(f"decoder.{i}", cell, cons))
        return groups
