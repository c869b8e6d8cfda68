"""fairseq model ``hybrid_lstm``: HybridNMT (Ono et al., section 3.2) as a fairseq model.

A thin adapter around :mod:`fairseq_efficiency.parallel`.  Three executions:

* one process, one device: an ordinary fairseq encoder-decoder (also what
  ``fairseq-generate`` uses, with incremental decoding);
* several processes (``fairseq-efficiency-launch --nproc N -- fairseq-train ...
  --pipeline-encoder-balance '[2,2]' --pipeline-decoder-balance '[2,2]'
  --pipeline-chunks 4 --criterion hybrid_cross_entropy``): wavefront pipeline
  over ranks + data-parallel attention/softmax; fairseq's ``--pipeline-*``
  flags are read without ``--pipeline-model-parallel``;
* one process, several GPUs (``--pipeline-model-parallel
  --pipeline-encoder-devices '[0,1]' ...``): layers stay on their devices.
"""
from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
from fairseq import utils
from fairseq.dataclass import FairseqDataclass
from fairseq.models import (
    FairseqEncoder, FairseqEncoderDecoderModel, FairseqIncrementalDecoder, register_model,
    register_model_architecture,
)
from omegaconf import II

from fairseq_efficiency.compat import literal_list
from fairseq_efficiency.errors import PluginConfigError, user_errors
from fairseq_efficiency.parallel.pipeline import (
    DevicePipeline, WavefrontPipeline, check_wavefront_decoder,
)
from fairseq_efficiency.parallel.seq2seq import HybridDecoder, HybridEncoder, check_chunks

# keys of the model's extra output across ranks: this rank's batch rows [lo, hi), and its
# seconds blocked on the other ranks (read by the hybrid_cross_entropy criterion)
HYBRID_SHARE = "hybrid_share"
HYBRID_WAIT = "hybrid_wait_s"


@dataclass
class HybridLSTMConfig(FairseqDataclass):
    encoder_embed_dim: int = field(default=512, metadata={"help": "source embedding size"})
    decoder_embed_dim: int = field(default=512, metadata={"help": "target embedding size"})
    hidden_size: int = field(default=1024, metadata={
        "help": "LSTM hidden size of encoder and decoder (equal: decoder layer l starts "
                "from encoder layer l's state)"})
    layers: int = field(default=4, metadata={"help": "LSTM layers of encoder and of decoder"})
    dropout: float = field(default=0.3, metadata={
        "help": "dropout on embeddings, every LSTM layer output and the attentional state"})
    input_feeding: bool = field(default=False, metadata={
        "help": "HybridNMT-IF: feed the previous attentional state into decoder layer 1 "
                "(Luong et al.); cannot be wavefront-pipelined"})
    share_decoder_input_output_embed: bool = field(default=False, metadata={
        "help": "tie the output layer F_c to the target embedding"})
    max_source_positions: int = II("task.max_source_positions")
    max_target_positions: int = II("task.max_target_positions")
    # fairseq's own distributed flags (no help: they are declared by fairseq already)
    pipeline_model_parallel: bool = II("distributed_training.pipeline_model_parallel")
    pipeline_encoder_balance: Optional[str] = II("distributed_training.pipeline_encoder_balance")
    pipeline_decoder_balance: Optional[str] = II("distributed_training.pipeline_decoder_balance")
    pipeline_encoder_devices: Optional[str] = II("distributed_training.pipeline_encoder_devices")
    pipeline_decoder_devices: Optional[str] = II("distributed_training.pipeline_decoder_devices")
    pipeline_devices: Optional[str] = II("distributed_training.pipeline_devices")
    pipeline_chunks: Optional[int] = II("distributed_training.pipeline_chunks")


def _layout(cfg):
    """(balance or None, chunks) from the ``--pipeline-*`` flags, validated.

    The balance is read with :func:`~fairseq_efficiency.compat.literal_list`
    (``ast.literal_eval``): these strings come from the checkpoint when
    ``fairseq-generate`` rebuilds the model, and are never evaluated as code.
    """
    enc = literal_list(cfg.get("pipeline_encoder_balance", None), "--pipeline-encoder-balance")
    dec = literal_list(cfg.get("pipeline_decoder_balance", None), "--pipeline-decoder-balance")
    chunks = cfg.get("pipeline_chunks", None)
    if enc is None and dec is None:  # no pipeline: fairseq's default 0 means "not set"
        if chunks is not None and chunks < 0:
            check_chunks(chunks, "--pipeline-chunks")
        return None, 1
    if enc != dec:
        raise PluginConfigError(
            "hybrid_lstm places decoder layer l with encoder layer l (it starts from "
            "that layer's final state): --pipeline-encoder-balance and "
            f"--pipeline-decoder-balance must be equal, got {enc} and {dec}")
    if chunks is None or chunks < 1:
        raise PluginConfigError("--pipeline-chunks (time chunks of the pipeline) must be >= 1 "
                                f"with --pipeline-encoder-balance, got {chunks}")
    layers = cfg.get("layers", None)
    if not enc or any(b < 1 for b in enc) or (layers is not None and sum(enc) != layers):
        raise PluginConfigError(f"--pipeline-encoder-balance {enc} must give every stage >= 1 "
                                f"layer, summing to the {layers} layers of hybrid_lstm (--layers)")
    return enc, chunks


class HybridLSTMEncoder(FairseqEncoder):
    def __init__(self, dictionary, core: HybridEncoder, max_positions: int):
        super().__init__(dictionary)
        self.core = core
        self._max_positions = max_positions

    def forward(self, src_tokens, src_lengths=None, **kwargs):
        src = utils.convert_padding_direction(src_tokens, self.core.padding_idx, left_to_right=True)
        S, finals, src_pad = self.core(src)
        return {
            "encoder_out": [S],  # [Ts, B, H]
            "encoder_padding_mask": [src_pad],  # [B, Ts]
            "encoder_h": [torch.stack([h for h, _ in finals])],  # [L, B, H]
            "encoder_c": [torch.stack([c for _, c in finals])],
        }

    def reorder_encoder_out(self, encoder_out: Dict, new_order):
        return {
            "encoder_out": [encoder_out["encoder_out"][0].index_select(1, new_order)],
            "encoder_padding_mask": [encoder_out["encoder_padding_mask"][0].index_select(0, new_order)],
            "encoder_h": [encoder_out["encoder_h"][0].index_select(1, new_order)],
            "encoder_c": [encoder_out["encoder_c"][0].index_select(1, new_order)],
        }

    def max_positions(self):
        return self._max_positions


class HybridLSTMDecoder(FairseqIncrementalDecoder):
    def __init__(self, dictionary, core: HybridDecoder, max_positions: int):
        super().__init__(dictionary)
        self.core = core
        self._max_positions = max_positions

    def forward(self, prev_output_tokens, encoder_out=None, incremental_state=None, **kwargs):
        S = encoder_out["encoder_out"][0]
        src_pad = encoder_out["encoder_padding_mask"][0]
        hs, cs = encoder_out["encoder_h"][0], encoder_out["encoder_c"][0]
        if incremental_state is None:
            init = [(hs[l], cs[l]) for l in range(hs.size(0))]
            logits, attn = self.core(prev_output_tokens, S, init, src_pad)
            return logits, {"attn": [attn]}
        cache = self.get_incremental_state(incremental_state, "cached_state")
        if cache is None:
            states = [(hs[l], cs[l]) for l in range(hs.size(0))]
            prev_hc = None
        else:
            states = [(cache["h"][l], cache["c"][l]) for l in range(cache["h"].size(0))]
            prev_hc = cache.get("hc")
        logits, attn, states, hc = self.core.step(prev_output_tokens[:, -1], S, states, src_pad,
                                                  prev_hc)
        new = {"h": torch.stack([h for h, _ in states]), "c": torch.stack([c for _, c in states])}
        if self.core.input_feeding:
            new["hc"] = hc
        self.set_incremental_state(incremental_state, "cached_state", new)
        return logits, {"attn": [attn]}

    def reorder_incremental_state(self, incremental_state, new_order):
        cache = self.get_incremental_state(incremental_state, "cached_state")
        if cache is None:
            return
        new = {"h": cache["h"].index_select(1, new_order),
               "c": cache["c"].index_select(1, new_order)}
        if cache.get("hc") is not None:
            new["hc"] = cache["hc"].index_select(0, new_order)
        self.set_incremental_state(incremental_state, "cached_state", new)

    def max_positions(self):
        return self._max_positions


@register_model("hybrid_lstm", dataclass=HybridLSTMConfig)
class HybridLSTMModel(FairseqEncoderDecoderModel):
    """HybridNMT: stacked-LSTM encoder-decoder without input feeding, batched attention head.

    ``self.pipeline`` is a :class:`WavefrontPipeline` (several ranks), a
    :class:`DevicePipeline` (``--pipeline-model-parallel``) or ``None``.
    """

    def __init__(self, cfg, encoder, decoder):
        super().__init__(encoder, decoder)
        self.cfg = cfg
        self.pipeline = None

    @classmethod
    @user_errors()
    def build_model(cls, cfg, task):
        for name in ("encoder_embed_dim", "decoder_embed_dim", "hidden_size", "layers"):
            if getattr(cfg, name) < 1:
                raise PluginConfigError(f"--{name.replace('_', '-')} must be >= 1")
        if not 0 <= cfg.dropout < 1:
            raise PluginConfigError(f"--dropout must be in [0, 1), got {cfg.dropout}")
        src_dict, tgt_dict = task.source_dictionary, task.target_dictionary
        if src_dict.pad() != tgt_dict.pad():
            raise PluginConfigError("source and target dictionaries must share the padding index")
        enc = HybridEncoder(len(src_dict), cfg.encoder_embed_dim, cfg.hidden_size, cfg.layers,
                            src_dict.pad(), cfg.dropout)
        dec = HybridDecoder(len(tgt_dict), cfg.decoder_embed_dim, cfg.hidden_size, cfg.layers,
                            tgt_dict.pad(), cfg.dropout, cfg.input_feeding,
                            cfg.share_decoder_input_output_embed)
        model = cls(cfg, HybridLSTMEncoder(src_dict, enc, cfg.max_source_positions),
                    HybridLSTMDecoder(tgt_dict, dec, cfg.max_target_positions))
        model.setup_parallel()
        return model

    def setup_parallel(self):
        """Choose the execution from the ``--pipeline-*`` flags and ``torch.distributed``."""
        cfg = self.cfg
        balance, chunks = _layout(cfg)
        enc, dec = self.encoder.core, self.decoder.core
        if cfg.get("pipeline_model_parallel", False):
            if balance is None:
                raise PluginConfigError("--pipeline-model-parallel with hybrid_lstm needs "
                                        "--pipeline-encoder-balance/--pipeline-decoder-balance")
            devs = literal_list(cfg.get("pipeline_encoder_devices", None),
                                "--pipeline-encoder-devices")
            ddevs = literal_list(cfg.get("pipeline_decoder_devices", None),
                                 "--pipeline-decoder-devices")
            if devs is None or (ddevs is not None and ddevs != devs):
                raise PluginConfigError("hybrid_lstm needs --pipeline-encoder-devices, equal to "
                                        "--pipeline-decoder-devices when given")
            out = literal_list(cfg.get("pipeline_devices", None), "--pipeline-devices")
            self.pipeline = DevicePipeline(
                enc, dec, balance, [torch.device("cuda", d) for d in devs], chunks,
                torch.device("cuda", out[-1]) if out else None).place()
        elif balance is not None and torch.distributed.is_available() \
                and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            self.pipeline = WavefrontPipeline(enc, dec, balance, chunks)
        elif balance is not None and len(balance) > 1:
            check_wavefront_decoder(dec)
        return self.pipeline

    def forward(self, src_tokens, src_lengths, prev_output_tokens, **kwargs):
        if self.pipeline is None:
            return super().forward(src_tokens, src_lengths, prev_output_tokens, **kwargs)
        src = utils.convert_padding_direction(src_tokens, self.encoder.core.padding_idx,
                                              left_to_right=True)
        if isinstance(self.pipeline, DevicePipeline):
            logits, attn = self.pipeline(src, prev_output_tokens)
            return logits, {"attn": [attn]}
        logits, attn, share = self.pipeline(src, prev_output_tokens)
        return logits, {"attn": [attn], HYBRID_SHARE: share,
                        HYBRID_WAIT: self.pipeline.pop_wait()}

    def get_targets(self, sample, net_output):
        target = sample["target"]
        share = net_output[1].get(HYBRID_SHARE) if isinstance(net_output[1], dict) else None
        if share is not None and target.size(0) != share[1] - share[0]:
            with user_errors():  # the first training step's criterion calls this
                raise PluginConfigError(
                    "hybrid_lstm across ranks computes the loss of a batch share per "
                    "rank: use --criterion hybrid_cross_entropy")
        return target


@register_model_architecture("hybrid_lstm", "hybrid_lstm_wmt_en_de")
def hybrid_lstm_wmt_en_de(args):
    """Table 2: 4+4 LSTM layers, 1024 hidden units, 512-dim embeddings, dropout 0.3."""
    args.layers = getattr(args, "layers", 4)
    args.hidden_size = getattr(args, "hidden_size", 1024)
    args.encoder_embed_dim = getattr(args, "encoder_embed_dim", 512)
    args.decoder_embed_dim = getattr(args, "decoder_embed_dim", 512)
    args.dropout = getattr(args, "dropout", 0.3)
