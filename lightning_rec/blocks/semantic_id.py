"""Semantic IDs: residual quantisation of item content embeddings, and a trie for constrained decoding.

GPR (arXiv 2511.10138, Sec. 3.1 "Unified semantic ID") maps every item (ad or organic content) to
L codes of a shared codebook hierarchy by residual quantisation of its content embedding, and
compares three tokenizers (its Table 1: collision rate and code usage):

- **RQ-KMeans**: residual k-means (Lloyd's algorithm on the input, then on the residuals, level by
  level); no network, no gradient.
- **RQ-VAE** (TIGER, arXiv 2305.05065, after Lee et al. 2022, arXiv 2203.01941): an MLP encoder and
  decoder around a residual quantiser trained end to end with the straight-through estimator,
  codebook and commitment losses (VQ-VAE, arXiv 1711.00937, Eq. 3).
- **RQ-KMeans+** (the paper's own; **reading**: no code is published): codebooks initialised from the
  RQ-KMeans solution, then trained as an RQ-VAE whose encoder is residual, ``z = x + MLP(x)``, with
  the MLP's last layer initialised at zero (and the decoder likewise, ``x_hat = z_q + MLP(z_q)``).
  At step 0 the model therefore *is* the RQ-KMeans solution (same codes, same reconstruction), and
  training can only move away from it where the loss improves.

Collapse (few codes used: RQ-VAE-Recommender issue #65) is countered by re-seeding dead codes: every
``reseed_interval`` training steps, each code that no batch item chose in that window is moved onto
a random residual of the current batch at its level (the recipe of vector-quantize-pytorch's
``threshold_ema_dead_code`` and of Jukebox, arXiv 2005.00341, Sec. 3.1, with a zero threshold).

Items whose L codes collide get one more code, a **dedup digit** (TIGER Sec. 3.1): 0, 1, 2, ... in
item order within each colliding group, 0 for every item without collision, so that every item has
a unique L + 1 code path. :class:`SemanticIdTrie` holds those paths: beam search over it can only
emit existing items, optionally restricted per request to an allow-list (ad targeting), and it maps
code paths back to items (GRID issue #11).

Axis legend:
    i  items            e  input (content embedding) size     d  latent size
    l  code levels      c  codebook size (codes per level)     b  batch (requests)
    k  beams            t  decoded levels so far              m  flattened rows
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from einops import rearrange, repeat
from huggingface_hub import ModelCard
from torch import Tensor, nn

from lightning_rec.hub.cards import render_model_card
from lightning_rec.hub.mixin import HubMixin

__all__ = [
    "BeamSearchResult",
    "SemanticIdQuantizer",
    "SemanticIdReport",
    "SemanticIdTrie",
    "dedup_digits",
    "residual_kmeans",
]

Method = Literal["rq_kmeans", "rq_vae", "rq_kmeans_plus"]
METHODS: tuple[str, ...] = ("rq_kmeans", "rq_vae", "rq_kmeans_plus")


# ---------------------------------------------------------------------------------- k-means
def kmeans(points: Tensor, num_clusters: int, iterations: int, generator: torch.Generator) -> Tensor:
    """Lloyd's k-means with k-means++ seeding (Arthur & Vassilvitskii 2007): points `m d` -> centroids `c d`.

    A cluster left empty by an iteration is re-seeded on the point farthest from its centroid, so
    every returned centroid owns at least one point when there are at least c distinct points.
    """
    if points.dim() != 2 or points.shape[0] < num_clusters:
        raise ValueError(
            f"k-means needs points of shape (m d) with m >= {num_clusters} clusters, "
            f"got {tuple(points.shape)}"
        )
    points = points.float()
    first = int(torch.randint(points.shape[0], (1,), generator=generator))
    centroids = [points[first]]
    nearest = (points - points[first]).pow(2).sum(-1)  # (m) squared distance to the nearest centroid
    for _ in range(1, num_clusters):
        # D^2 sampling; all-zero distances (duplicate points only) fall back to uniform.
        weights = nearest if bool(nearest.sum() > 0) else torch.ones_like(nearest)
        chosen = int(torch.multinomial(weights, 1, generator=generator))
        centroids.append(points[chosen])
        nearest = torch.minimum(nearest, (points - points[chosen]).pow(2).sum(-1))
    centroid_table = torch.stack(centroids)  # (c d)
    for _ in range(iterations):
        distances = torch.cdist(points, centroid_table).pow(2)  # (m c)
        assignment = distances.argmin(dim=1)
        counts = torch.bincount(assignment, minlength=num_clusters).float()
        sums = torch.zeros_like(centroid_table).index_add_(0, assignment, points)
        updated = sums / counts.clamp(min=1)[:, None]
        empty = counts == 0
        if bool(empty.any()):
            own = distances.gather(1, assignment[:, None])[:, 0]  # (m) distance to own centroid
            farthest = own.topk(int(empty.sum())).indices
            updated[empty] = points[farthest]
        if torch.equal(updated, centroid_table):
            break
        centroid_table = updated
    return centroid_table


def residual_kmeans(
    embeddings: Tensor, num_levels: int, codebook_size: int, iterations: int = 25, seed: int = 0
) -> Tensor:
    """RQ-KMeans codebooks `l c d` of embeddings `i d`: k-means on the input, then on each level's
    residuals."""
    generator = torch.Generator().manual_seed(seed)
    residual = embeddings.detach().float().cpu()
    codebooks = []
    for _ in range(num_levels):
        centroids = kmeans(residual, codebook_size, iterations, generator)
        codebooks.append(centroids)
        residual = residual - centroids[torch.cdist(residual, centroids).argmin(dim=1)]
    return torch.stack(codebooks)


def dedup_digits(codes: Tensor) -> Tensor:
    """The dedup digit of each item: codes `i l` -> `i`, 0, 1, 2, ... in item order within each group
    of items sharing all l codes (0 for an item without collision)."""
    _, group = torch.unique(codes, dim=0, return_inverse=True)
    digits = torch.zeros(codes.shape[0], dtype=torch.long)
    seen: dict[int, int] = {}
    for row, key in enumerate(group.tolist()):
        digits[row] = seen.get(key, 0)
        seen[key] = digits[row].item() + 1
    return digits.to(codes.device)


# ------------------------------------------------------------------------------- quantizer
@dataclass(frozen=True)
class SemanticIdReport:
    """Tokenizer quality on a set of items (GPR Table 1's metrics, plus two of ours).

    Attributes:
        collision_rate: share of items whose L codes another item also has, before the dedup digit
            (1 - distinct code paths / items).
        code_usage: per level, the share of the c codes that at least one item uses.
        perplexity: per level, exp of the entropy of the code distribution over the items (c when
            uniform, 1 when collapsed onto one code).
        reconstruction_error: mean over items of ||x - x_hat||^2 / ||x||^2.
        max_dedup_digit: the largest dedup digit (the size of the largest collision group - 1).
    """

    collision_rate: float
    code_usage: tuple[float, ...]
    perplexity: tuple[float, ...]
    reconstruction_error: float
    max_dedup_digit: int


class ResidualMLP(nn.Module):
    """``x + MLP(x)`` with the MLP's last Linear at zero: the identity at init (RQ-KMeans+'s encoder)."""

    def __init__(self, size: int, hidden_size: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, size))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        """`m size` -> `m size`."""
        return x + self.body(x)


class SemanticIdQuantizer(HubMixin, nn.Module):
    """Residual quantiser of item content embeddings into L codes (GPR Sec. 3.1; TIGER).

    ``fit(embeddings)`` trains it on a catalogue; ``forward`` maps embeddings to codes;
    ``assign(embeddings)`` adds the dedup digit; ``report(embeddings)`` measures it.

    Args:
        input_size: e, the content embedding size (384 for all-MiniLM-L6-v2).
        num_levels: L, code levels (GPR: 3).
        codebook_size: c, codes per level (GPR: 256).
        method: "rq_kmeans", "rq_vae" or "rq_kmeans_plus" (see the module docstring).
        latent_size: d of RQ-VAE's latent (TIGER: 32); the other methods quantise in the input space
            and need ``None`` (or e).
        hidden_size: width of the encoder/decoder MLPs (unused by "rq_kmeans").
        commitment_weight: beta of the commitment loss (VQ-VAE: 0.25).
        kmeans_iterations: Lloyd iterations per level of RQ-KMeans (and RQ-KMeans+'s init).
        reseed_interval: steps between dead-code re-seedings during ``fit``; 0 disables it.
    """

    codebooks: Tensor

    def __init__(
        self,
        input_size: int = 384,
        num_levels: int = 3,
        codebook_size: int = 256,
        method: Method = "rq_kmeans_plus",
        latent_size: int | None = None,
        hidden_size: int = 256,
        commitment_weight: float = 0.25,
        kmeans_iterations: int = 25,
        reseed_interval: int = 50,
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"SemanticIdQuantizer: method must be one of {METHODS}, got {method!r}")
        for name, value in (
            ("input_size", input_size),
            ("num_levels", num_levels),
            ("codebook_size", codebook_size),
        ):
            if value < 1:
                raise ValueError(f"SemanticIdQuantizer: {name} must be >= 1, got {value}")
        if method != "rq_vae" and latent_size not in (None, input_size):
            raise ValueError(
                f"SemanticIdQuantizer: method {method!r} quantises in the input space, so latent_size "
                f"must be None or input_size={input_size}, got {latent_size}"
            )
        if reseed_interval < 0:
            raise ValueError(f"SemanticIdQuantizer: reseed_interval must be >= 0, got {reseed_interval}")
        self.input_size = input_size
        self.num_levels = num_levels
        self.codebook_size = codebook_size
        self.method = method
        self.latent_size = latent_size or input_size
        self.commitment_weight = commitment_weight
        self.kmeans_iterations = kmeans_iterations
        self.reseed_interval = reseed_interval
        self.vocab: dict[str, Any] | None = None
        # RQ-KMeans codebooks are fitted, not trained: a buffer, saved with the weights.
        codebooks = torch.randn(num_levels, codebook_size, self.latent_size) / math.sqrt(self.latent_size)
        if method == "rq_kmeans":
            self.register_buffer("codebooks", codebooks)
        else:
            self.codebooks = nn.Parameter(codebooks)
        self.encoder: nn.Module
        self.decoder: nn.Module
        if method == "rq_kmeans":
            self.encoder, self.decoder = nn.Identity(), nn.Identity()
        elif method == "rq_kmeans_plus":
            self.encoder, self.decoder = (
                ResidualMLP(input_size, hidden_size),
                ResidualMLP(input_size, hidden_size),
            )
        else:
            self.encoder = nn.Sequential(
                nn.Linear(input_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, self.latent_size)
            )
            self.decoder = nn.Sequential(
                nn.Linear(self.latent_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, input_size)
            )

    @classmethod
    def hub_example(cls) -> tuple[SemanticIdQuantizer, tuple[Tensor]]:
        """A tiny RQ-KMeans+ (e 8, 2 levels of 4 codes) fitted for 5 steps on 32 random points, and
        those points."""
        embeddings = torch.randn(32, 8, generator=torch.Generator().manual_seed(0))
        quantizer = cls(input_size=8, num_levels=2, codebook_size=4, hidden_size=16, kmeans_iterations=5)
        quantizer.fit(embeddings, steps=5, batch_size=16)
        return quantizer, (embeddings,)

    # ------------------------------------------------------------------ quantisation
    def quantize(self, latent: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Residual quantisation of latents `m d` -> codes `m l`, quantised sum `m d`, residuals `m l d`.

        Level l picks the nearest code to the residual r_l (r_0 = z, r_{l+1} = r_l - e_{l, code_l}).
        The quantised sum carries gradient into the codebooks; the residuals are those each level saw.
        """
        residual = latent
        codes, quantized, residuals = [], torch.zeros_like(latent), []
        for level in range(self.num_levels):
            codebook = self.codebooks[level]
            code = torch.cdist(residual.detach().float(), codebook.detach().float()).argmin(dim=1)
            chosen = codebook[code]
            residuals.append(residual)
            codes.append(code)
            quantized = quantized + chosen
            # The next level quantises what this one left; the codebook's gradient comes from its
            # own level's codebook loss, not through later levels.
            residual = residual - chosen.detach()
        return torch.stack(codes, dim=1), quantized, torch.stack(residuals, dim=1)

    def forward(self, embeddings: Tensor) -> Tensor:
        """Content embeddings `m e` -> codes `m l` (long, without the dedup digit)."""
        self._check_embeddings(embeddings)
        return self.quantize(self.encoder(embeddings.float()))[0]

    def reconstruct(self, embeddings: Tensor) -> Tensor:
        """Embeddings `m e` -> decoded quantised embeddings `m e` (x_hat)."""
        self._check_embeddings(embeddings)
        return self.decoder(self.quantize(self.encoder(embeddings.float()))[1])

    def loss(self, embeddings: Tensor) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """RQ-VAE loss of a batch `m e` -> (scalar loss, diagnostics, codes `m l`).

        loss = ||x - dec(z + sg(z_q - z))||^2 + sum_l ||sg(r_l) - e_l||^2 + beta ||r_l - sg(e_l)||^2,
        means over the batch and the size (VQ-VAE Eq. 3 per level; straight-through estimator).
        """
        self._check_embeddings(embeddings)
        x = embeddings.float()
        latent = self.encoder(x)
        codes, quantized, residuals = self.quantize(latent)
        chosen = torch.stack(
            [self.codebooks[level][codes[:, level]] for level in range(self.num_levels)], dim=1
        )
        codebook_loss = (residuals.detach() - chosen).pow(2).mean()
        commitment_loss = (residuals - chosen.detach()).pow(2).mean()
        straight_through = latent + (quantized - latent).detach()
        reconstruction_loss = (self.decoder(straight_through) - x).pow(2).mean()
        loss = reconstruction_loss + self.num_levels * (
            codebook_loss + self.commitment_weight * commitment_loss
        )
        return (
            loss,
            {"reconstruction": reconstruction_loss.detach(), "codebook": codebook_loss.detach()},
            codes,
        )

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        embeddings: Tensor,
        steps: int = 1000,
        batch_size: int = 256,
        learning_rate: float = 1e-3,
        seed: int = 0,
    ) -> list[dict[str, float]]:
        """Fit on a catalogue's embeddings `i e`; returns per-step diagnostics (empty for RQ-KMeans).

        RQ-KMeans and RQ-KMeans+ first fit the codebooks by residual k-means (RQ-KMeans+ stops there
        when ``steps`` is 0); RQ-VAE and RQ-KMeans+ then train for ``steps`` Adam steps on random
        batches, re-seeding dead codes every ``reseed_interval`` steps. The result is a function of
        ``seed`` and the initial weights.
        """
        self._check_embeddings(embeddings)
        x = embeddings.detach().float()
        if self.method != "rq_vae":
            codebooks = residual_kmeans(x, self.num_levels, self.codebook_size, self.kmeans_iterations, seed)
            with torch.no_grad():
                self.codebooks.copy_(codebooks.to(self.codebooks.device))
        if self.method == "rq_kmeans":
            return []
        generator = torch.Generator().manual_seed(seed)
        if self.method == "rq_vae":
            # TIGER's RQ-VAE starts from random codebooks, scaled to the latents it will quantise.
            with torch.no_grad():
                scale = self.encoder(x[: min(len(x), 1024)]).std()
                self.codebooks.copy_(torch.randn(self.codebooks.shape, generator=generator) * scale)
        optimizer = torch.optim.Adam(self.parameters(), lr=learning_rate)
        usage = torch.zeros(self.num_levels, self.codebook_size, dtype=torch.long)
        history = []
        self.train()
        for step in range(steps):
            batch = x[torch.randint(len(x), (min(batch_size, len(x)),), generator=generator)]
            loss, diagnostics, codes = self.loss(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            for level in range(self.num_levels):
                usage[level] += torch.bincount(codes[:, level].cpu(), minlength=self.codebook_size)
            if self.reseed_interval and (step + 1) % self.reseed_interval == 0:
                self._reseed_dead_codes(batch, usage == 0, generator)
                usage.zero_()
            history.append(
                {"loss": float(loss.detach()), **{name: float(value) for name, value in diagnostics.items()}}
            )
        self.eval()
        return history

    @torch.no_grad()
    def _reseed_dead_codes(self, batch: Tensor, dead: Tensor, generator: torch.Generator) -> None:
        """Move the dead codes (`l c` bool) of each level onto random residuals of ``batch`` at that level."""
        _, _, residuals = self.quantize(self.encoder(batch))  # (m l d)
        for level in range(self.num_levels):
            dead_codes = dead[level].nonzero()[:, 0]
            if len(dead_codes) == 0:
                continue
            rows = torch.randint(len(batch), (len(dead_codes),), generator=generator)
            self.codebooks[level, dead_codes.to(self.codebooks.device)] = residuals[
                rows.to(batch.device), level
            ]

    # ------------------------------------------------------------------ ids and reports
    @torch.no_grad()
    def assign(self, embeddings: Tensor) -> Tensor:
        """A catalogue's embeddings `i e` -> unique semantic ids `i (l+1)`: L codes and the dedup digit."""
        codes = self(embeddings)
        return torch.cat([codes, dedup_digits(codes)[:, None]], dim=1)

    @torch.no_grad()
    def report(self, embeddings: Tensor) -> SemanticIdReport:
        """Collision rate, per-level code usage and perplexity, and reconstruction error on items `i e`."""
        codes = self(embeddings)
        x = embeddings.float()
        reconstruction = self.reconstruct(embeddings)
        relative_error = (reconstruction - x).pow(2).sum(-1) / x.pow(2).sum(-1).clamp(min=1e-12)
        usage, perplexity = [], []
        for level in range(self.num_levels):
            counts = torch.bincount(codes[:, level], minlength=self.codebook_size).float()
            usage.append(float((counts > 0).float().mean()))
            share = counts[counts > 0] / counts.sum()
            perplexity.append(float(torch.exp(-(share * share.log()).sum())))
        distinct = torch.unique(codes, dim=0).shape[0]
        return SemanticIdReport(
            collision_rate=1.0 - distinct / codes.shape[0],
            code_usage=tuple(usage),
            perplexity=tuple(perplexity),
            reconstruction_error=float(relative_error.mean()),
            max_dedup_digit=int(dedup_digits(codes).max()),
        )

    @torch.no_grad()
    def index_catalogue(self, embeddings: Tensor, item_ids: Sequence[str] | None = None) -> SemanticIdTrie:
        """Assign a catalogue's semantic ids and keep them as the quantizer's vocabulary.

        embeddings `i e` (row r = item r) -> the trie of their ids `i (l+1)` (level sizes: c per code
        level, then the dedup digits' range). The ids, raw item ids and the report are saved with
        the quantizer (``vocab.json``), so a tokenizer pulled from the Hub maps codes back to items
        (:meth:`trie`) without the embeddings.
        """
        ids = self.assign(embeddings).cpu()
        sizes = [self.codebook_size] * self.num_levels + [int(ids[:, -1].max()) + 1]
        self.vocab = {
            "semantic_ids": ids.tolist(),
            "level_sizes": sizes,
            "item_ids": list(item_ids) if item_ids is not None else None,
            "report": asdict(self.report(embeddings)),
        }
        return self.trie()

    def trie(self) -> SemanticIdTrie:
        """The trie of the catalogue indexed by :meth:`index_catalogue` (also after ``from_pretrained``)."""
        vocab = getattr(self, "vocab", None)
        if vocab is None:
            raise ValueError(
                "SemanticIdQuantizer: no catalogue indexed; call index_catalogue(embeddings) first"
            )
        return SemanticIdTrie(torch.tensor(vocab["semantic_ids"]), vocab["level_sizes"], vocab["item_ids"])

    def generate_model_card(self, repo_id: str = "<org>/<name>", **kwargs: Any) -> ModelCard:
        """The semantic-ID tokenizer card, with the indexed catalogue's report as its metrics."""
        vocab = getattr(self, "vocab", None)
        report = vocab["report"] if vocab is not None else None
        metrics = {}
        if report is not None:
            metrics["tokenizer/collision_rate"] = report["collision_rate"]
            metrics["tokenizer/reconstruction_error"] = report["reconstruction_error"]
            for level, (usage, perplexity) in enumerate(
                zip(report["code_usage"], report["perplexity"], strict=True)
            ):
                metrics[f"tokenizer/code_usage_level{level + 1}"] = usage
                metrics[f"tokenizer/perplexity_level{level + 1}"] = perplexity
        return render_model_card(
            "semantic_id",
            config=self.config_tree(),
            metrics=metrics,
            repo_id=repo_id,
            method=self.method,
            num_levels=self.num_levels,
            codebook_size=self.codebook_size,
            num_items=len(vocab["semantic_ids"]) if vocab is not None else 0,
        )

    def _check_embeddings(self, embeddings: Tensor) -> None:
        if embeddings.dim() != 2 or embeddings.shape[1] != self.input_size:
            raise ValueError(
                f"SemanticIdQuantizer: embeddings must have shape (m, e={self.input_size}), "
                f"got {tuple(embeddings.shape)}"
            )


# ------------------------------------------------------------------------------------ trie
@dataclass
class BeamSearchResult:
    """What :meth:`SemanticIdTrie.beam_search` returns, beams best first.

    Attributes:
        codes: `b k l` the decoded code paths.
        log_probs: `b k` their summed step log-probabilities; -inf for an empty slot (fewer valid
            items than beams).
        items: `b k` the trie row (item) of each path; -1 for an empty slot.
    """

    codes: Tensor
    log_probs: Tensor
    items: Tensor


class SemanticIdTrie:
    """The prefix tree of a catalogue's semantic ids, for constrained decoding and id -> item lookup.

    Args:
        codes: `i l` long, row r the code path of item r; rows must be unique (use
            :meth:`SemanticIdQuantizer.assign`, which appends the dedup digit).
        level_sizes: the number of codes at each level (default: the largest code + 1 per level).
        item_ids: optional raw item id of each row, for :meth:`raw_item_ids`.

    Prefixes are integer keys in mixed radix (key of the empty prefix 0; appending code z at level t
    gives ``key * level_sizes[t] + z``), and each level holds the sorted keys of its valid prefixes,
    so the allowed next codes of any batch of prefixes are one ``torch.isin``.
    """

    def __init__(
        self, codes: Tensor, level_sizes: Sequence[int] | None = None, item_ids: Sequence[str] | None = None
    ) -> None:
        if codes.dim() != 2 or codes.shape[0] < 1 or codes.shape[1] < 1:
            raise ValueError(
                f"SemanticIdTrie: codes must have shape (i >= 1, l >= 1), got {tuple(codes.shape)}"
            )
        codes = codes.long().cpu()
        if bool((codes < 0).any()):
            raise ValueError("SemanticIdTrie: codes must be >= 0")
        sizes = list(level_sizes) if level_sizes is not None else (codes.max(dim=0).values + 1).tolist()
        if len(sizes) != codes.shape[1]:
            raise ValueError(f"SemanticIdTrie: {len(sizes)} level_sizes for codes of {codes.shape[1]} levels")
        too_large = codes >= torch.tensor(sizes)
        if bool(too_large.any()):
            level = int(too_large.any(dim=0).nonzero()[0])
            raise ValueError(
                f"SemanticIdTrie: level {level} has code {int(codes[:, level].max())} >= its size "
                f"{sizes[level]}"
            )
        if math.prod(sizes) >= 2**62:
            raise ValueError(f"SemanticIdTrie: level sizes {sizes} overflow 64-bit prefix keys")
        if torch.unique(codes, dim=0).shape[0] != codes.shape[0]:
            raise ValueError(
                "SemanticIdTrie: two items share a code path; append a dedup digit (dedup_digits)"
            )
        if item_ids is not None and len(item_ids) != codes.shape[0]:
            raise ValueError(f"SemanticIdTrie: {len(item_ids)} item_ids for {codes.shape[0]} code rows")
        self.codes = codes
        self.level_sizes = sizes
        self.item_ids = list(item_ids) if item_ids is not None else None
        keys = [torch.zeros(codes.shape[0], dtype=torch.long)]
        for level, size in enumerate(sizes):
            keys.append(keys[-1] * size + codes[:, level])
        self._item_prefix_keys = torch.stack(keys, dim=1)  # (i l+1): key of each item's prefix of length t
        self._prefix_keys = [torch.unique(keys[level + 1]) for level in range(len(sizes))]  # sorted
        full = keys[-1]
        self._full_keys, self._full_order = full.sort()

    @property
    def num_levels(self) -> int:
        return len(self.level_sizes)

    @property
    def num_items(self) -> int:
        return self.codes.shape[0]

    def prefix_keys(self, prefixes: Tensor) -> Tensor:
        """Prefixes `m t` -> their integer keys `m`."""
        keys = torch.zeros(prefixes.shape[0], dtype=torch.long, device=prefixes.device)
        for level in range(prefixes.shape[1]):
            keys = keys * self.level_sizes[level] + prefixes[:, level]
        return keys

    def allowed_next(self, prefixes: Tensor, allowed_items: Tensor | None = None) -> Tensor:
        """Which codes may follow each prefix: prefixes `m t` (t < l) -> `m c_t` bool.

        ``allowed_items`` `m i` bool restricts row r to the paths of its allowed items.
        """
        level = prefixes.shape[1]
        if level >= self.num_levels:
            raise ValueError(
                f"SemanticIdTrie: prefixes of length {level} are complete ({self.num_levels} levels)"
            )
        size = self.level_sizes[level]
        device = prefixes.device
        candidates = self.prefix_keys(prefixes)[:, None] * size + torch.arange(size, device=device)  # (m c)
        if allowed_items is None:
            return torch.isin(candidates, self._prefix_keys[level].to(device))
        if tuple(allowed_items.shape) != (prefixes.shape[0], self.num_items):
            raise ValueError(
                f"SemanticIdTrie: allowed_items must have shape (m, i) = "
                f"({prefixes.shape[0]}, {self.num_items}), got {tuple(allowed_items.shape)}"
            )
        # One key space per row: row r's valid keys are r * span + its allowed items' prefix keys.
        span = math.prod(self.level_sizes[: level + 1])
        rows, items = allowed_items.nonzero(as_tuple=True)
        valid = rows * span + self._item_prefix_keys[:, level + 1].to(device)[items]
        row_offsets = torch.arange(prefixes.shape[0], device=device)[:, None] * span
        return torch.isin(candidates + row_offsets, valid)

    def item_index(self, codes: Tensor) -> Tensor:
        """Code paths `... l` -> the trie row of each `...` (long), -1 where no item has that path."""
        flat = rearrange(codes.long(), "... l -> (...) l")
        keys = self.prefix_keys(flat)
        full_keys = self._full_keys.to(keys.device)
        position = torch.searchsorted(full_keys, keys).clamp(max=len(full_keys) - 1)
        found = full_keys[position] == keys
        rows = torch.where(found, self._full_order.to(keys.device)[position], torch.full_like(keys, -1))
        return rows.reshape(codes.shape[:-1])

    def raw_item_ids(self, rows: Tensor) -> list:
        """Trie rows (any shape, -1 for none) -> nested lists of raw item ids (None for -1)."""
        if self.item_ids is None:
            raise ValueError("SemanticIdTrie: built without item_ids, so rows cannot be mapped to raw ids")
        ids = self.item_ids

        def convert(value: int | list) -> str | list | None:
            return (
                [convert(entry) for entry in value]
                if isinstance(value, list)
                else (ids[value] if value >= 0 else None)
            )

        return convert(rows.tolist())

    def beam_search(
        self,
        step_log_probs: Callable[[Tensor], Tensor],
        batch_size: int,
        beam_size: int,
        allowed_items: Tensor | None = None,
        value_fn: Callable[[Tensor], Tensor] | None = None,
        value_weight: float = 0.0,
        value_candidates: int | None = None,
        device: torch.device | str = "cpu",
    ) -> BeamSearchResult:
        """Constrained beam search: only code paths of (allowed) items are ever expanded.

        Args:
            step_log_probs: prefixes `b k t` -> log-probabilities `b k c_t` of the next code (called once
                per level, t = 0..l-1; at t = 0, k = 1). Disallowed codes are masked to -inf here.
            batch_size: b, the number of requests.
            beam_size: beams kept per request.
            allowed_items: optional `b i` bool allow-list per request (targeting constraints).
            value_fn: value-guided pruning (GPR Sec. 3.3, HTE): candidate prefixes `b m (t+1)` ->
                values `b m`. At each level the ``value_candidates`` best candidates by log-prob are
                re-ranked by ``log_prob + value_weight * value`` and the best ``beam_size`` kept.
            value_candidates: candidates scored by ``value_fn`` (default 2 * beam_size).

        Returns:
            :class:`BeamSearchResult`, beams ordered by the final ranking score.
        """
        if beam_size < 1 or batch_size < 1:
            raise ValueError(
                f"SemanticIdTrie: beam_size and batch_size must be >= 1, got {beam_size}, {batch_size}"
            )
        self._check_allow_list(allowed_items, batch_size)
        prefixes = torch.zeros(batch_size, 1, 0, dtype=torch.long, device=device)  # (b k t)
        scores = torch.zeros(batch_size, 1, device=device)  # (b k) summed log-probs
        for level in range(self.num_levels):
            beams, size = prefixes.shape[1], self.level_sizes[level]
            log_probs = step_log_probs(prefixes).float()
            if tuple(log_probs.shape) != (batch_size, beams, size):
                raise ValueError(
                    f"SemanticIdTrie: step_log_probs returned {tuple(log_probs.shape)} at level {level}, "
                    f"expected (b, k, c_t) = ({batch_size}, {beams}, {size})"
                )
            allowed = self.allowed_next(
                rearrange(prefixes, "b k t -> (b k) t"),
                None if allowed_items is None else repeat(allowed_items, "b i -> (b k) i", k=beams),
            )
            log_probs = log_probs.masked_fill(
                ~rearrange(allowed, "(b k) c -> b k c", b=batch_size), float("-inf")
            )
            totals = rearrange(scores[:, :, None] + log_probs, "b k c -> b (k c)")
            keep = min(beam_size, totals.shape[1])
            if value_fn is None:
                ranking, chosen = totals.topk(keep, dim=1)
                scores = ranking
            else:
                pool = min(value_candidates or 2 * beam_size, totals.shape[1])
                pool_scores, pool_index = totals.topk(pool, dim=1)
                pool_prefixes = self._extend(prefixes, pool_index, size)
                values = value_fn(pool_prefixes).float()
                ranking = torch.where(
                    torch.isfinite(pool_scores), pool_scores + value_weight * values, pool_scores
                )
                order = ranking.topk(keep, dim=1).indices
                chosen = pool_index.gather(1, order)
                scores = pool_scores.gather(1, order)
            prefixes = self._extend(prefixes, chosen, size)
        items = self.item_index(prefixes)
        items = torch.where(torch.isfinite(scores), items, torch.full_like(items, -1))
        return BeamSearchResult(codes=prefixes, log_probs=scores, items=items)

    def sample(
        self,
        step_log_probs: Callable[[Tensor], Tensor],
        batch_size: int,
        num_samples: int,
        allowed_items: Tensor | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> tuple[Tensor, Tensor]:
        """Constrained ancestral sampling: ``num_samples`` paths per request, level by level, each code
        drawn from the step's distribution renormalised over the codes the trie (and the allow-list) permit.

        ``step_log_probs``: prefixes `b g t` -> log-probs `b g c_t`. Returns codes `b g l` and their
        trie rows (items) `b g`, never -1.
        """
        self._check_allow_list(allowed_items, batch_size)
        if allowed_items is not None and not bool(allowed_items.any(dim=1).all()):
            raise ValueError("SemanticIdTrie: a request's allow-list is empty; nothing can be sampled")
        prefixes = torch.zeros(batch_size, num_samples, 0, dtype=torch.long, device=device)
        for _ in range(self.num_levels):
            log_probs = step_log_probs(prefixes).float()
            allowed = self.allowed_next(
                rearrange(prefixes, "b g t -> (b g) t"),
                None if allowed_items is None else repeat(allowed_items, "b i -> (b g) i", g=num_samples),
            )
            masked = rearrange(log_probs, "b g c -> (b g) c").masked_fill(~allowed, float("-inf"))
            codes = torch.multinomial(masked.softmax(dim=-1), 1, generator=generator)  # (bg 1)
            prefixes = torch.cat([prefixes, rearrange(codes, "(b g) 1 -> b g 1", b=batch_size)], dim=2)
        return prefixes, self.item_index(prefixes)

    def _check_allow_list(self, allowed_items: Tensor | None, batch_size: int) -> None:
        if allowed_items is not None and tuple(allowed_items.shape) != (batch_size, self.num_items):
            raise ValueError(
                f"SemanticIdTrie: allowed_items must have shape (b, i) = ({batch_size}, {self.num_items}), "
                f"got {tuple(allowed_items.shape)}"
            )

    @staticmethod
    def _extend(prefixes: Tensor, flat_index: Tensor, size: int) -> Tensor:
        """Prefixes `b k t` and chosen indices `b m` into the flattened `(k c)` candidates -> `b m (t+1)`."""
        parent, code = flat_index // size, flat_index % size
        kept = prefixes.gather(1, repeat(parent, "b m -> b m t", t=prefixes.shape[2]))
        return torch.cat([kept, code[:, :, None]], dim=2)
