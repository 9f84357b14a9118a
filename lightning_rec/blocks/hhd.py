"""GPR's Heterogeneous Hierarchical Decoder (HHD; arXiv 2511.10138, Sec. 3.2).

GPR reads a user's heterogeneous behaviour as one sequence of typed tokens and generates the next ad
as a path of semantic-ID codes. The decoder has three parts; the paper gives no code, so their exact
forms are our reading (marked **reading**):

- **HSD**, the Heterogeneous Sequence-wise Decoder (:class:`HeterogeneousSequenceDecoder`): tokens of
  four types, U (user profile), O (organic content engaged with), E (environment of the request)
  and I (ad items engaged with). Items (O and I) are embedded as the sum of their semantic-ID code
  embeddings, one table per level, so ads and organic content share one space. The attention mask
  is hybrid: the prompt tokens (U, O, E) attend to each other bidirectionally, everything else is
  causal (and sees the whole prompt). Each type has its own LayerNorm gain and bias (**reading**
  of "token-type-aware normalisation"), as each type has its own embedding.
- **PTD**, the Progressive Token-wise Decoder: K thinking tokens over the HSD
  (:class:`~lightning_rec.blocks.ThinkingTokenEncoder`, reused), a refining step
  (:class:`~lightning_rec.blocks.DiffusionHead`, reused: the deterministic reverse process from the
  thoughts), then the L codes level by level: ``logits_l = s_l E_l^T`` (tied to the input code
  table), ``s_{l+1} = LN(s_l + W_l E_l[z_l])`` (**reading**).
- **HTE**, the Hierarchical Token-wise Evaluator: one value head per level, ``V_l(s, z_<l)`` from
  ``s_l``: HEPO's critic and the pruning signal of value-guided beam search.

:class:`MultiTokenPredictionHeads` turn the refined intent into N head intents (**reading**: head j
predicts the (j+1)-th next item, Gloeckle et al. 2024, arXiv 2404.19737), with loss weights that
sum to 1 (GPR's MTP objective).

Axis legend:
    b  batch (requests)       n  prompt/sequence tokens     a  appended tokens (thoughts)
    l  code levels            c  codes at a level            d  hidden size
    k  thinking tokens        j  prediction heads           m  flattened rows
    t  decoded levels so far
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from lightning_rec.blocks.diffusion import DiffusionHead
from lightning_rec.blocks.thinking import ThinkingTokenEncoder
from lightning_rec.hub.mixin import HubMixin

__all__ = [
    "ENVIRONMENT",
    "ITEM",
    "ORGANIC",
    "PAD",
    "TOKEN_TYPES",
    "USER",
    "HeterogeneousHierarchicalDecoder",
    "HeterogeneousSequenceDecoder",
    "MultiTokenPredictionHeads",
    "hybrid_attention_mask",
]

#: token types, by index: padding, U (user), O (organic), E (environment), I (ad item).
TOKEN_TYPES = ("pad", "user", "organic", "environment", "item")
PAD, USER, ORGANIC, ENVIRONMENT, ITEM = range(len(TOKEN_TYPES))
PROMPT_TYPES = (USER, ORGANIC, ENVIRONMENT)


def hybrid_attention_mask(token_types: Tensor) -> Tensor:
    """Token types `b n` -> boolean mask `b 1 n n` (True = query i may attend to key j).

    Prompt tokens (U, O, E) see every prompt token, before or after them, and no other token: the
    prompt is the request's context, read as a whole. Every other token (I, and tokens appended by
    the thinking steps) sees the whole prompt and the non-prompt tokens up to itself. So nothing a
    token reads depends on a later non-prompt token, even through several layers (the prefix-LM mask
    of T5/UniLM, with the prompt defined by type rather than position). Padding is never a key;
    every query sees itself, so a padding query's softmax is never over an empty set.
    """
    n = token_types.shape[1]
    is_prompt = torch.isin(token_types, torch.tensor(PROMPT_TYPES, device=token_types.device))
    causal = torch.ones(n, n, dtype=torch.bool, device=token_types.device).tril()
    query_prompt, key_prompt = rearrange(is_prompt, "b i -> b i 1"), rearrange(is_prompt, "b j -> b 1 j")
    allowed = torch.where(query_prompt, key_prompt, key_prompt | causal)
    allowed = allowed & rearrange(token_types != PAD, "b j -> b 1 j")
    allowed = allowed | torch.eye(n, dtype=torch.bool, device=token_types.device)
    return rearrange(allowed, "b i j -> b 1 i j")


class TypedLayerNorm(nn.Module):
    """LayerNorm whose gain and bias depend on the token type: `b n d`, types `b n` -> `b n d`."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(len(TOKEN_TYPES), hidden_size))
        self.bias = nn.Parameter(torch.zeros(len(TOKEN_TYPES), hidden_size))

    def forward(self, hidden: Tensor, token_types: Tensor) -> Tensor:
        normalised = F.layer_norm(hidden, hidden.shape[-1:])
        return normalised * self.weight[token_types] + self.bias[token_types]


class TypedTransformerLayer(nn.Module):
    """Pre-LN transformer layer with type-aware norms: `x + Attn(LN_type(x))`, `x + FFN(LN_type(x))`."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if hidden_size % num_heads != 0:
            raise ValueError(f"hidden_size={hidden_size} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.dropout = dropout
        self.attention_norm = TypedLayerNorm(hidden_size)
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.attention_out = nn.Linear(hidden_size, hidden_size)
        self.ffn_norm = TypedLayerNorm(hidden_size)
        self.ffn = nn.Sequential(
            nn.Linear(hidden_size, 4 * hidden_size),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(4 * hidden_size, hidden_size),
        )
        self.residual_dropout = nn.Dropout(dropout)

    def forward(self, hidden: Tensor, token_types: Tensor, mask: Tensor) -> Tensor:
        """hidden `b n d`, token types `b n`, mask `b 1 n n` -> `b n d`."""
        q, k, v = rearrange(
            self.qkv(self.attention_norm(hidden, token_types)),
            "b n (three h d) -> three b h n d",
            three=3,
            h=self.num_heads,
        )
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        hidden = hidden + self.residual_dropout(
            self.attention_out(rearrange(attended, "b h n d -> b n (h d)"))
        )
        return hidden + self.residual_dropout(self.ffn(self.ffn_norm(hidden, token_types)))


class HeterogeneousSequenceDecoder(nn.Module):
    """HSD: typed tokens -> hidden states `b n d`, with the hybrid mask and type-aware norms.

    Inputs of a sequence of n tokens (left-padded; type PAD at padding):

    - ``codes`` `b n l`: the semantic ids of O and I tokens (ignored at U, E and padding);
    - ``token_types`` `b n` in {PAD, USER, ORGANIC, ENVIRONMENT, ITEM};
    - ``feature_ids`` `b n`: the user-feature id of U tokens and the environment id of E tokens
      (ignored elsewhere).

    A token's input is its content embedding (code sum, user feature or environment) plus its type
    embedding plus its position counted from the end (the most recent token is 0, as SASRec).

    It offers the interface :class:`~lightning_rec.blocks.ThinkingTokenEncoder` reads
    (``hidden_size``, ``encode_prefix``, ``extend``): appended vectors are I-type, causal tokens.
    """

    def __init__(
        self,
        level_sizes: Sequence[int],
        hidden_size: int,
        num_layers: int,
        num_heads: int,
        max_len: int,
        num_user_features: int,
        num_environments: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.max_len = max_len
        self.code_embeddings = nn.ModuleList(nn.Embedding(size, hidden_size) for size in level_sizes)
        self.user_embedding = nn.Embedding(num_user_features, hidden_size)
        self.environment_embedding = nn.Embedding(num_environments, hidden_size)
        self.type_embedding = nn.Embedding(len(TOKEN_TYPES), hidden_size)
        self.position_embedding = nn.Embedding(max_len, hidden_size)
        for embedding in (
            *self.code_embeddings,
            self.user_embedding,
            self.environment_embedding,
            self.type_embedding,
            self.position_embedding,
        ):
            nn.init.normal_(embedding.weight, std=0.02)
        self.input_dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            TypedTransformerLayer(hidden_size, num_heads, dropout) for _ in range(num_layers)
        )
        self.final_norm = TypedLayerNorm(hidden_size)

    def embed_items(self, codes: Tensor) -> Tensor:
        """Item codes `... l` -> item embeddings `... d`, the sum of the level embeddings."""
        return sum(table(codes[..., level]) for level, table in enumerate(self.code_embeddings))

    def embed(self, codes: Tensor, token_types: Tensor, feature_ids: Tensor) -> Tensor:
        """Typed tokens -> inputs `b n d` (see the class docstring)."""
        if codes.dim() != 3 or codes.shape[:2] != token_types.shape or feature_ids.shape != token_types.shape:
            raise ValueError(
                "HSD: codes must have shape (b n l) and token_types, feature_ids (b n); got "
                f"{tuple(codes.shape)}, {tuple(token_types.shape)}, {tuple(feature_ids.shape)}"
            )
        if token_types.shape[1] > self.max_len:
            raise ValueError(f"HSD: sequences of {token_types.shape[1]} tokens exceed max_len={self.max_len}")
        is_item = ((token_types == ORGANIC) | (token_types == ITEM))[..., None]
        content = torch.where(is_item, self.embed_items(codes.clamp(min=0)), 0.0)
        # Each table is read only at its own tokens (id 0 elsewhere), so an id of one vocabulary is
        # never looked up in another.
        is_user, is_environment = (token_types == USER)[..., None], (token_types == ENVIRONMENT)[..., None]
        content = content + is_user * self.user_embedding(torch.where(is_user[..., 0], feature_ids, 0))
        content = content + is_environment * self.environment_embedding(
            torch.where(is_environment[..., 0], feature_ids, 0)
        )
        real = (token_types != PAD).long()
        positions = (real.sum(dim=1, keepdim=True) - real.cumsum(dim=1)).clamp(min=0)
        inputs = content + self.type_embedding(token_types) + self.position_embedding(positions)
        return self.input_dropout(inputs * (token_types != PAD)[..., None])

    def _run(self, inputs: Tensor, token_types: Tensor) -> Tensor:
        mask = hybrid_attention_mask(token_types)
        hidden = inputs
        for layer in self.layers:
            hidden = layer(hidden, token_types, mask)
        return self.final_norm(hidden, token_types)

    def forward(self, codes: Tensor, token_types: Tensor, feature_ids: Tensor) -> Tensor:
        """Typed tokens -> hidden states `b n d`."""
        return self._run(self.embed(codes, token_types, feature_ids), token_types)

    def encode_prefix(
        self, codes: Tensor, token_types: Tensor, feature_ids: Tensor
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Hidden states `b n d` and the state that :meth:`extend` continues from (inputs, types)."""
        inputs = self.embed(codes, token_types, feature_ids)
        return self._run(inputs, token_types), (inputs, token_types)

    def extend(self, prefix: tuple[Tensor, Tensor], appended: Tensor) -> Tensor:
        """Appended vectors `b a d` (I-type, causal, after the prefix) -> their hidden states `b a d`.

        The hybrid mask keeps the prompt tokens blind to appended ones, so the prefix's states are
        unchanged by what is appended; the layers run again over the whole sequence (no cache: the
        sequences here are short).
        """
        inputs, token_types = prefix
        appended_types = torch.full(appended.shape[:2], ITEM, dtype=torch.long, device=appended.device)
        hidden = self._run(
            torch.cat([inputs, appended.to(inputs.dtype)], dim=1),
            torch.cat([token_types, appended_types], dim=1),
        )
        return hidden[:, -appended.shape[1] :]


class MultiTokenPredictionHeads(HubMixin, nn.Module):
    """N prediction heads over one intent: `b d` -> head intents `b j d` (GPR's MTP).

    Head j is ``intent + W_j intent`` with W_j at zero initially (every head starts at the shared
    intent and specialises to its target). ``weights`` are the loss weights w_j, normalised to sum 1.

    Args:
        hidden_size: d.
        num_heads: N (GPR: 4).
        weights: w_j before normalisation (default uniform).
    """

    def __init__(
        self, hidden_size: int = 64, num_heads: int = 4, weights: Sequence[float] | None = None
    ) -> None:
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"MultiTokenPredictionHeads: num_heads must be >= 1, got {num_heads}")
        raw = [1.0] * num_heads if weights is None else [float(weight) for weight in weights]
        if len(raw) != num_heads or min(raw) < 0 or sum(raw) <= 0:
            raise ValueError(
                f"MultiTokenPredictionHeads: weights must be {num_heads} non-negative numbers with a "
                f"positive sum, got {weights}"
            )
        self.num_heads = num_heads
        self.register_buffer("weights", torch.tensor(raw) / sum(raw), persistent=False)
        self.projections = nn.Parameter(torch.zeros(num_heads, hidden_size, hidden_size))

    @classmethod
    def hub_example(cls) -> tuple[MultiTokenPredictionHeads, tuple[Tensor]]:
        """Four heads of size 8 with random projections, and intents ``(3 8)``."""
        heads = cls(hidden_size=8, num_heads=4)
        nn.init.normal_(heads.projections, std=0.1)
        return heads, (torch.randn(3, 8, generator=torch.Generator().manual_seed(0)),)

    def forward(self, intent: Tensor) -> Tensor:
        """intent `b d` -> `b j d`."""
        return rearrange(intent, "b d -> b 1 d") + torch.einsum("bd,jed->bje", intent, self.projections)


class HeterogeneousHierarchicalDecoder(HubMixin, nn.Module):
    """HHD = HSD + PTD (thinking, refining, level-wise codes) + HTE (values), with MTP heads.

    Args:
        level_sizes: codes per level of the semantic ids, the dedup digit included (e.g. 256, 256, 256, 4).
        hidden_size, num_layers, num_heads, max_len, dropout: the HSD transformer.
        num_user_features, num_environments: vocabularies of U and E tokens.
        num_thinking_tokens: K thinking steps of the PTD.
        diffusion: the refining head (its ``hidden_size`` must equal ``hidden_size``); None skips refining.
        num_prediction_heads, prediction_weights: the MTP heads (see :class:`MultiTokenPredictionHeads`).
    """

    def __init__(
        self,
        level_sizes: Sequence[int] = (64, 64, 64, 4),
        hidden_size: int = 64,
        num_layers: int = 2,
        num_heads: int = 2,
        max_len: int = 52,
        num_user_features: int = 1,
        num_environments: int = 8,
        dropout: float = 0.1,
        num_thinking_tokens: int = 2,
        diffusion: DiffusionHead | None = None,
        num_prediction_heads: int = 4,
        prediction_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if not level_sizes or min(level_sizes) < 1:
            raise ValueError(f"level_sizes must be a non-empty list of sizes >= 1, got {level_sizes}")
        if diffusion is not None and diffusion.hidden_size != hidden_size:
            raise ValueError(
                f"diffusion.hidden_size={diffusion.hidden_size} must equal hidden_size={hidden_size}"
            )
        self.level_sizes = list(level_sizes)
        self.hidden_size = hidden_size
        self.hsd = HeterogeneousSequenceDecoder(
            level_sizes,
            hidden_size,
            num_layers,
            num_heads,
            max_len,
            num_user_features,
            num_environments,
            dropout,
        )
        self.thinking = ThinkingTokenEncoder(self.hsd, num_thinking_tokens)  # type: ignore[arg-type]
        self.diffusion = diffusion
        self.heads = MultiTokenPredictionHeads(hidden_size, num_prediction_heads, prediction_weights)
        # One state update per code fed back into the path: the last level's code ends it, so L - 1 (an
        # L-th update would never be used, and DDP rejects parameters that get no gradient).
        self.level_updates = nn.ModuleList(nn.Linear(hidden_size, hidden_size) for _ in level_sizes[:-1])
        self.level_norms = nn.ModuleList(nn.LayerNorm(hidden_size) for _ in level_sizes[:-1])
        self.value_heads = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, 1))
            for _ in level_sizes
        )

    @classmethod
    def hub_example(cls) -> tuple[HeterogeneousHierarchicalDecoder, tuple[Tensor, ...]]:
        """A tiny HHD (levels 4, 4, 2; d 16; a diffusion head) and a batch of 3 typed sequences of 6
        tokens with 2 target paths per row."""
        generator = torch.Generator().manual_seed(0)
        head = DiffusionHead(hidden_size=16, num_steps=8, sampling_steps=4)
        nn.init.normal_(head.denoiser.output.weight, std=0.1)
        model = cls(level_sizes=(4, 4, 2), hidden_size=16, max_len=8, diffusion=head, num_prediction_heads=2)
        token_types = torch.tensor([[PAD, USER, ORGANIC, ITEM, ORGANIC, ENVIRONMENT]] * 3)
        token_types[0, 1] = PAD
        codes = torch.stack(
            [torch.randint(0, size, (3, 6), generator=generator) for size in (4, 4, 2)], dim=-1
        )
        feature_ids = torch.zeros(3, 6, dtype=torch.long)
        targets = torch.stack(
            [torch.randint(0, size, (3, 2), generator=generator) for size in (4, 4, 2)], dim=-1
        )
        return model, (codes, token_types, feature_ids, targets)

    @property
    def num_levels(self) -> int:
        return len(self.level_sizes)

    # ------------------------------------------------------------------ HSD + PTD's thinking and refining
    def intents(self, codes: Tensor, token_types: Tensor, feature_ids: Tensor) -> tuple[Tensor, Tensor]:
        """Typed tokens (a request ends with its E token) -> head intents `b j d` and thoughts `b k d`.

        HSD encodes the tokens; K thinking tokens reason after the last one; the diffusion head
        refines the last thought (deterministic reverse process) into the intent; the MTP heads
        split it into one intent per predicted item.
        """
        prefix = self.hsd.encode_prefix(codes, token_types, feature_ids)
        thoughts = self.thinking(token_types, prefix=prefix)
        intent = thoughts[:, -1] if self.diffusion is None else self.diffusion(thoughts)
        return self.heads(intent), thoughts

    # ------------------------------------------------------------------ PTD's level-wise codes, HTE
    def level_states(self, intent: Tensor, prefix: Tensor) -> Tensor:
        """intent `m d`, decoded codes `m t` -> decoder states `m (t+1) d` (s_0 = intent, ..., s_t)."""
        states = [intent]
        for level in range(prefix.shape[1]):
            update = self.level_updates[level](self.hsd.code_embeddings[level](prefix[:, level]))
            states.append(self.level_norms[level](states[-1] + update))
        return torch.stack(states, dim=1)

    def level_logits(self, state: Tensor, level: int) -> Tensor:
        """State `... d` at a level -> logits `... c_level` over its codes (tied to the code embeddings)."""
        return state @ self.hsd.code_embeddings[level].weight.T

    def level_value(self, state: Tensor, level: int) -> Tensor:
        """HTE: state `... d` before choosing the code of ``level`` -> V_level `...`."""
        return self.value_heads[level](state)[..., 0]

    def teacher_forced(self, intent: Tensor, targets: Tensor) -> tuple[list[Tensor], Tensor]:
        """intent `m d`, target paths `m l` -> per-level log-probs `[m c_l]` and values `m l` (V(s, z_<l))."""
        states = self.level_states(intent, targets[:, :-1])  # (m l d)
        log_probs = [
            F.log_softmax(self.level_logits(states[:, level], level).float(), dim=-1)
            for level in range(self.num_levels)
        ]
        # The critic reads the decoder's states but does not train them: its regression on rewards
        # would otherwise pull the policy's representation (the usual failure of a shared trunk).
        values = torch.stack(
            [self.level_value(states[:, level].detach(), level) for level in range(self.num_levels)], dim=1
        )
        return log_probs, values

    def path_log_probs(self, intent: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """intent `m d`, paths `m l` -> log pi(z_l | s, z_<l) `m l` and values `m l`."""
        log_probs, values = self.teacher_forced(intent, targets)
        chosen = torch.stack(
            [
                log_probs[level].gather(1, targets[:, level : level + 1])[:, 0]
                for level in range(self.num_levels)
            ],
            dim=1,
        )
        return chosen, values

    def next_code_log_probs(self, intent: Tensor, prefix: Tensor) -> tuple[Tensor, Tensor]:
        """For decoding: intent `m d`, prefixes `m t` (t < l) -> log-probs `m c_t` of the next code and
        V_t `m`."""
        state = self.level_states(intent, prefix)[:, -1]
        level = prefix.shape[1]
        return F.log_softmax(self.level_logits(state, level).float(), dim=-1), self.level_value(state, level)

    def forward(self, codes: Tensor, token_types: Tensor, feature_ids: Tensor, targets: Tensor) -> Tensor:
        """Typed tokens and target paths `b j l` (one per head) -> log-probs `b j l` of the targets."""
        intents, _ = self.intents(codes, token_types, feature_ids)
        heads = intents.shape[1]
        chosen, _ = self.path_log_probs(
            rearrange(intents, "b j d -> (b j) d"), rearrange(targets[:, :heads], "b j l -> (b j) l")
        )
        return rearrange(chosen, "(b j) l -> b j l", j=heads)
