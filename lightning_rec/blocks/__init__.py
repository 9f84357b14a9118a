"""Layer 1: reusable nn.Modules. No Lightning, no I/O, no data formats."""

from lightning_rec.blocks.diffusion import DiffusionHead, DiffusionSample
from lightning_rec.blocks.heads import ScoreHead, last_token_positions
from lightning_rec.blocks.hhd import (
    HeterogeneousHierarchicalDecoder,
    HeterogeneousSequenceDecoder,
    MultiTokenPredictionHeads,
)
from lightning_rec.blocks.judge import (
    AspectEvidence,
    CachedEvidence,
    EmbeddingAspectEvidence,
    ItemText,
    LLMAspectEvidence,
    PersonalizedSemanticJudge,
    UserContext,
    history_contexts,
)
from lightning_rec.blocks.pooling import mean_pooled_sentence_vectors
from lightning_rec.blocks.prompts import DeepPrompts, tiny_vit_config
from lightning_rec.blocks.router import RandomExpandedAnalyticRouter
from lightning_rec.blocks.semantic_id import SemanticIdQuantizer, SemanticIdReport, SemanticIdTrie
from lightning_rec.blocks.sequence import (
    HSTU,
    SEQUENCE_ENCODERS,
    BERT4Rec,
    GRU4Rec,
    SASRec,
    SequenceEncoder,
)
from lightning_rec.blocks.smoa import (
    SMoALinear,
    block_partition,
    inject_smoa,
    load_smoa,
    save_smoa,
    set_smoa_adapter,
    smoa_adapter_config,
    smoa_lora_config,
    smoa_state_dict,
)
from lightning_rec.blocks.temporal_ensemble import ClassifierHead, TemporalEnsembleHeads
from lightning_rec.blocks.thinking import ThinkingBackbone, ThinkingTokenEncoder, as_sequence_encoder

__all__ = [
    "HSTU",
    "SEQUENCE_ENCODERS",
    "AspectEvidence",
    "BERT4Rec",
    "CachedEvidence",
    "ClassifierHead",
    "DeepPrompts",
    "DiffusionHead",
    "DiffusionSample",
    "EmbeddingAspectEvidence",
    "GRU4Rec",
    "HeterogeneousHierarchicalDecoder",
    "HeterogeneousSequenceDecoder",
    "ItemText",
    "LLMAspectEvidence",
    "MultiTokenPredictionHeads",
    "PersonalizedSemanticJudge",
    "RandomExpandedAnalyticRouter",
    "SASRec",
    "SMoALinear",
    "ScoreHead",
    "SemanticIdQuantizer",
    "SemanticIdReport",
    "SemanticIdTrie",
    "SequenceEncoder",
    "TemporalEnsembleHeads",
    "ThinkingBackbone",
    "ThinkingTokenEncoder",
    "UserContext",
    "as_sequence_encoder",
    "block_partition",
    "history_contexts",
    "inject_smoa",
    "last_token_positions",
    "load_smoa",
    "mean_pooled_sentence_vectors",
    "save_smoa",
    "set_smoa_adapter",
    "smoa_adapter_config",
    "smoa_lora_config",
    "smoa_state_dict",
    "tiny_vit_config",
]
