"""``transformer_meprop``: fairseq's Transformer with meProp in the FFN layers.

Every encoder and decoder layer's feed-forward block (``fc1``, ``fc2``) is a
:class:`~fairseq_efficiency.meprop.TopKLinear` sharing the original
parameters. Attention projections stay dense: fairseq's
``MultiheadAttention`` fast path reads their weights directly, so a swapped
module would be bypassed. meSimp (Algorithm 2) removes FFN hidden units
(``fc1`` rows and bias, ``fc2`` columns).

fairseq's ``TransformerConfig`` is hierarchical and cannot be converted from
command-line flags for a dataclass-registered model, so the model is
configured by a flat dataclass with the usual ``transformer`` fields (and
fairseq's defaults, ``transformer`` base architecture); the rest of
``TransformerConfig`` keeps its defaults.
"""
import argparse
from dataclasses import dataclass, field

from fairseq.dataclass.utils import gen_parser_from_dataclass
from fairseq.models import register_model
from fairseq.models.transformer import TransformerConfig, TransformerModelBase
from fairseq.models.transformer.transformer_legacy import base_architecture
from omegaconf import II

from fairseq_efficiency.errors import user_errors
from fairseq_efficiency.meprop import TopKLinear
from fairseq_efficiency.meprop.mesimp import linear_group
from fairseq_efficiency.meprop.lstm_meprop import MePropModelConfig, MePropModelMixin, check_meprop_cfg


@dataclass
class TransformerMePropConfig(MePropModelConfig):
    activation_fn: str = field(default="relu", metadata={"help": "activation function"})
    dropout: float = field(default=0.1, metadata={"help": "dropout probability"})
    attention_dropout: float = field(default=0.0, metadata={"help": "attention dropout"})
    activation_dropout: float = field(default=0.0, metadata={"help": "dropout after the FFN activation"})
    encoder_embed_dim: int = field(default=512, metadata={"help": "encoder embedding dimension"})
    encoder_ffn_embed_dim: int = field(default=2048, metadata={"help": "encoder FFN hidden size"})
    encoder_layers: int = field(default=6, metadata={"help": "number of encoder layers"})
    encoder_attention_heads: int = field(default=8, metadata={"help": "encoder attention heads"})
    encoder_normalize_before: bool = field(default=False, metadata={"help": "pre-norm encoder"})
    encoder_learned_pos: bool = field(default=False, metadata={"help": "learned encoder positions"})
    decoder_embed_dim: int = field(default=512, metadata={"help": "decoder embedding dimension"})
    decoder_ffn_embed_dim: int = field(default=2048, metadata={"help": "decoder FFN hidden size"})
    decoder_layers: int = field(default=6, metadata={"help": "number of decoder layers"})
    decoder_attention_heads: int = field(default=8, metadata={"help": "decoder attention heads"})
    decoder_normalize_before: bool = field(default=False, metadata={"help": "pre-norm decoder"})
    decoder_learned_pos: bool = field(default=False, metadata={"help": "learned decoder positions"})
    share_decoder_input_output_embed: bool = field(default=False, metadata={
        "help": "share decoder input and output embeddings"})
    share_all_embeddings: bool = field(default=False, metadata={
        "help": "share encoder, decoder and output embeddings"})
    no_token_positional_embeddings: bool = field(default=False, metadata={
        "help": "no positional embeddings"})
    layernorm_embedding: bool = field(default=False, metadata={"help": "layernorm on embeddings"})
    no_scale_embedding: bool = field(default=False, metadata={"help": "do not scale embeddings"})
    max_source_positions: int = II("task.max_source_positions")
    max_target_positions: int = II("task.max_target_positions")


def _to_transformer_config(cfg) -> TransformerConfig:
    ns = argparse.Namespace(**{k: getattr(cfg, k) for k in TransformerMePropConfig.__dataclass_fields__
                               if not k.startswith("_")})
    base_architecture(ns)  # fairseq's transformer defaults for every other field
    return TransformerConfig.from_namespace(ns)


@register_model("transformer_meprop", dataclass=TransformerMePropConfig)
class TransformerMePropModel(MePropModelMixin, TransformerModelBase):
    def __init__(self, cfg, encoder, decoder, meprop_cfg=None):
        super().__init__(cfg, encoder, decoder)
        self.meprop_cfg = meprop_cfg
        k = check_meprop_cfg(meprop_cfg)
        for layer in list(encoder.layers) + list(decoder.layers):
            layer.fc1 = TopKLinear.from_linear(layer.fc1, k, meprop_cfg.meprop_mode)
            layer.fc2 = TopKLinear.from_linear(layer.fc2, k, meprop_cfg.meprop_mode)

    @classmethod
    def add_args(cls, parser):
        # TransformerModelBase.add_args would add the hierarchical TransformerConfig
        gen_parser_from_dataclass(parser, TransformerMePropConfig())

    @classmethod
    @user_errors()
    def build_model(cls, cfg, task):
        # a plain TransformerModelBase to wrap (meProp flags are checked in __init__)
        base = TransformerModelBase.build_model(_to_transformer_config(cfg), task)
        model = cls(base.cfg, base.encoder, base.decoder, meprop_cfg=cfg)
        if cfg.meprop_alternate:
            model.apply_alternation(1)
        model.warn_dense_layers()
        return model

    def mesimp_groups(self):
        """The FFN hidden units of every layer (fc1 rows + bias, fc2 columns)."""
        groups = []
        for side, layers in (("encoder", self.encoder.layers), ("decoder", self.decoder.layers)):
            for i, layer in enumerate(layers):
                groups.append(linear_group(f"{side}.{i}.ffn", layer.fc1, [layer.fc2]))
        return groups
