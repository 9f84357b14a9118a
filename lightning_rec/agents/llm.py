"""The language-model runtime: one protocol, three backends.

Every language-model method of the zoo (Reasoning to Rank, STAR, ChainRec, AMA, UI-Venus) talks to
an :class:`LLMBackend`:

- ``generate(prompts, max_new_tokens, temperature, top_p, n, stop)`` samples ``n`` completions per
  prompt and returns a :class:`Generation`: texts, token ids, per-token log-probs, token counts;
- ``score(prompts, continuations)`` returns the summed log-probability of each continuation given its
  prompt (rank candidates by likelihood, DPO-style rewards);
- ``usage`` keeps a running :class:`LLMUsage` account of requests, tokens and seconds.

Backends:

- :class:`HFCausalLM`: any ``AutoModelForCausalLM`` (Hub id, folder, or a built model), batched with
  left padding and a KV cache, chat template applied when the tokenizer has one, safetensors only and
  never ``trust_remote_code``. It is an ``nn.Module`` that can carry an SMoA
  (:mod:`lightning_rec.blocks.smoa`) or PEFT LoRA adapter, and its log-probs carry gradients when
  grad is enabled, for RL (GRPO, PPO) on the sampled completions.
- :class:`OpenAICompatible`: a served model (vLLM, llama.cpp server, any ``/v1/chat/completions``
  endpoint) over HTTP with the standard library, with timeouts and retries.
- :class:`ScriptedLLM`: deterministic regex rules, for tests and as a teacher.

Log-probs are those of the model's own distribution (``log_softmax`` of the logits, temperature 1,
no nucleus cut), whatever the sampling settings, as vLLM returns by default and as the PPO / GRPO
ratio expects; a :class:`Generation` row is prompt-major: row ``i * n + j`` is sample ``j`` of
prompt ``i``.

Axes: b prompts, r rows (``b * n``), p prompt tokens, t completion tokens, v vocabulary.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_rec.blocks.smoa import SMOA_PEFT_TYPE, inject_smoa, load_smoa
from lightning_rec.hub.peft_layout import read_peft_adapter_config
from lightning_rec.hub.pretrained import resolve_pretrained

__all__ = [
    "Generation",
    "HFCausalLM",
    "LLMBackend",
    "LLMRequestError",
    "LLMUsage",
    "OpenAICompatible",
    "Prompt",
    "ScriptedLLM",
]

#: a plain string, or a chat as ``[{"role": "user", "content": "..."}, ...]``.
Prompt = str | Sequence[Mapping[str, str]]
AdapterName = Literal["smoa", "lora"]


@dataclass
class LLMUsage:
    """A running account: requests (one per prompt), tokens read and written, wall-clock seconds."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    def add(self, requests: int, prompt_tokens: int, completion_tokens: int, seconds: float) -> None:
        self.requests += requests
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.seconds += seconds


@dataclass
class Generation:
    """``n`` completions per prompt, prompt-major (row ``i * n + j`` is sample ``j`` of prompt ``i``).

    Attributes:
        texts: ``r`` completion texts, special tokens removed and cut before the first stop string.
        token_ids: ``r`` lists of generated token ids (the end-of-text or stop-completing token
            included); ``None`` for a backend that does not expose ids (an HTTP server).
        logprobs: ``(r t)`` log-probability of each generated token, 0 on padding; it carries
            gradients when the backend computed it with grad enabled.
        mask: ``(r t)`` bool, True on generated tokens.
        prompt_tokens: ``r`` prompt lengths in tokens.
    """

    texts: list[str]
    token_ids: list[list[int]] | None
    logprobs: Tensor
    mask: Tensor
    prompt_tokens: list[int]

    @property
    def completion_tokens(self) -> Tensor:
        """``(r)`` generated tokens per row."""
        return self.mask.sum(1)

    def sequence_logprobs(self) -> Tensor:
        """``(r)`` summed log-probability of each completion."""
        return (self.logprobs * self.mask).sum(1)


@runtime_checkable
class LLMBackend(Protocol):
    """What a language-model method needs from a model (see the module docstring)."""

    usage: LLMUsage

    def generate(
        self,
        prompts: Sequence[Prompt],
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        n: int = 1,
        stop: Sequence[str] = (),
    ) -> Generation: ...

    def score(self, prompts: Sequence[Prompt], continuations: Sequence[str]) -> Tensor: ...


def _check_sampling(max_new_tokens: int, temperature: float, top_p: float, n: int) -> None:
    if max_new_tokens < 1 or n < 1:
        raise ValueError(f"max_new_tokens and n must be >= 1, got {max_new_tokens} and {n}")
    if temperature < 0.0 or not 0.0 < top_p <= 1.0:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature} and {top_p}")


def _cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` before its earliest stop string, and whether one occurred (OpenAI's semantics)."""
    cuts = [text.find(s) for s in stop if s and s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


def _padded(rows: Sequence[Sequence[float]], length: int | None = None) -> tuple[Tensor, Tensor]:
    """Right-pad float rows into ``(r t)`` values and a bool mask."""
    width = max([len(row) for row in rows] + [length or 0, 1])
    values = torch.zeros(len(rows), width)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for index, row in enumerate(rows):
        values[index, : len(row)] = torch.tensor(row, dtype=torch.float32)
        mask[index, : len(row)] = True
    return values, mask


# ---------------------------------------------------------------------------------------- Hugging Face
class HFCausalLM(nn.Module):
    """A Hugging Face causal LM as an :class:`LLMBackend`, batched, left-padded, with a KV cache.

    Args:
        model: a Hub id or folder (loaded with ``use_safetensors=True``, never ``trust_remote_code``),
            or an already built ``PreTrainedModel``.
        tokenizer: a Hub id, folder or tokenizer object (default: ``model``'s id or folder).
        chat_template: wrap prompts in the tokenizer's chat template (a string prompt becomes one user
            turn, followed by the generation prompt); ``None`` uses it exactly when the tokenizer has
            one. A chat prompt (list of messages) needs a template.
        adapter: attach a fresh trainable adapter, ``"smoa"`` (:func:`~lightning_rec.blocks.inject_smoa`)
            or ``"lora"`` (PEFT), to ``target_modules`` with ``r``, ``alpha`` and, for SMoA,
            ``num_blocks``; the base weights are then frozen.
        adapter_path: load a saved adapter instead (a PEFT-layout folder or Hub repo written by
            :func:`~lightning_rec.blocks.save_smoa` or PEFT; SMoA is recognised by its ``peft_type``).
        batch_size: rows per forward pass (prompts times samples).
        seed: seed of the sampling generator, so sampled completions are reproducible.
    """

    def __init__(
        self,
        model: str | nn.Module,
        tokenizer: Any = None,
        chat_template: bool | None = None,
        adapter: AdapterName | None = None,
        adapter_path: str | None = None,
        target_modules: Sequence[str] | str = ("q_proj", "v_proj"),
        r: int = 8,
        alpha: float = 16.0,
        num_blocks: int = 2,
        batch_size: int = 16,
        seed: int = 0,
    ) -> None:
        super().__init__()
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if adapter is not None and adapter_path is not None:
            raise ValueError("give adapter (a fresh one) or adapter_path (a saved one), not both")
        if isinstance(model, str):
            name = resolve_pretrained(model)
            model = AutoModelForCausalLM.from_pretrained(
                name, use_safetensors=True, trust_remote_code=False, dtype=torch.float32
            )
            tokenizer = tokenizer if tokenizer is not None else name
        if tokenizer is None:
            raise ValueError("a model given as an object needs its tokenizer")
        if isinstance(tokenizer, str):
            tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(tokenizer), trust_remote_code=False)
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            # Padding is masked everywhere, so any id serves; end-of-text is the usual choice.
            tokenizer.pad_token = tokenizer.eos_token
        has_template = getattr(tokenizer, "chat_template", None) is not None
        if chat_template and not has_template:
            raise ValueError("chat_template=True but the tokenizer has no chat template")
        self.chat_template = has_template if chat_template is None else chat_template
        targets = target_modules if isinstance(target_modules, str) else list(target_modules)
        self.model = _attach_adapter(model, adapter, adapter_path, targets, r, alpha, num_blocks)
        self.model.eval()  # no dropout while sampling; callers switch to train() for RL if they want it
        self._cache_keyword = _cache_keyword(self.model)
        self.batch_size = batch_size
        self.seed = seed
        self._generator: torch.Generator | None = None
        self.usage = LLMUsage()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---------------------------------------------------------------- tokens
    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """Token ids of one prompt, through the chat template when it is used."""
        if isinstance(prompt, str) and not self.chat_template:
            return self.tokenizer(prompt)["input_ids"]
        if not self.chat_template:
            raise ValueError("a chat prompt (a list of messages) needs a tokenizer with a chat template")
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        # The template writes its own special tokens (BOS included), so none are added here.
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _left_padded(self, rows: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
        """``(b p)`` left-padded ids and attention mask."""
        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for index, row in enumerate(rows):
            if not row:
                raise ValueError(f"prompt {index} is empty after tokenization")
            ids[index, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[index, width - len(row) :] = 1
        return ids.to(self.device), mask.to(self.device)

    # ------------------------------------------------------------ log-probs
    def completion_logprobs(
        self, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor, completion_mask: Tensor
    ) -> Tensor:
        """``(r t)`` log-probs of right-padded completions ``(r t)`` after left-padded prompts ``(r p)``.

        One teacher-forced forward pass over prompt + completion; it keeps the autograd graph when
        grad is enabled. Position ids count real tokens only, so a row's result does not depend on
        how much padding the batch gave it. Padding positions get 0.
        """
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask.long()], dim=1)
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).logits
        # The logits at position p - 1 + s predict completion token s.
        predicting = logits[:, prompt_ids.shape[1] - 1 : -1].float()  # (r t v)
        logprobs = predicting.log_softmax(-1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
        return logprobs * completion_mask

    # ------------------------------------------------------------- generate
    def generate(
        self,
        prompts: Sequence[Prompt],
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        n: int = 1,
        stop: Sequence[str] = (),
    ) -> Generation:
        """Sample ``n`` completions per prompt (``temperature=0``: greedy); see :class:`Generation`.

        Sampling runs without grad, with the KV cache. When grad is enabled, the log-probs are then
        recomputed by one teacher-forced pass (:meth:`completion_logprobs`) so they carry gradients;
        otherwise they are the ones read off during sampling (the same values).
        """
        _check_sampling(max_new_tokens, temperature, top_p, n)
        start = time.perf_counter()
        encoded = [ids for prompt in prompts for ids in [self.encode_prompt(prompt)] * n]
        texts, token_ids, logprob_rows = [], [], []
        for first in range(0, len(encoded), self.batch_size):
            chunk = encoded[first : first + self.batch_size]
            prompt_ids, prompt_mask = self._left_padded(chunk)
            completion, completion_mask, logprobs, chunk_texts = self._sample(
                prompt_ids, prompt_mask, max_new_tokens, temperature, top_p, stop
            )
            if torch.is_grad_enabled():
                logprobs = self.completion_logprobs(prompt_ids, prompt_mask, completion, completion_mask)
            texts += chunk_texts
            for row in range(len(chunk)):
                length = int(completion_mask[row].sum())
                token_ids.append(completion[row, :length].tolist())
                logprob_rows.append(logprobs[row])
        width = max(len(row) for row in token_ids)
        logprobs = torch.stack([F.pad(row[:width], (0, width - len(row[:width]))) for row in logprob_rows])
        mask = torch.zeros(len(token_ids), width, dtype=torch.bool, device=logprobs.device)
        for row, ids in enumerate(token_ids):
            mask[row, : len(ids)] = True
        prompt_tokens = [len(ids) for ids in encoded]
        self.usage.add(len(prompts), sum(prompt_tokens[::n]), int(mask.sum()), time.perf_counter() - start)
        return Generation(texts, token_ids, logprobs, mask, prompt_tokens)

    @torch.no_grad()
    def _sample(
        self,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        stop: Sequence[str],
    ) -> tuple[Tensor, Tensor, Tensor, list[str]]:
        """Sample with the KV cache; returns ``completion (r t)``, ``mask (r t)``, ``logprobs (r t)``,
        and the texts. A row stops at end-of-text or once its text holds a stop string."""
        rows = prompt_ids.shape[0]
        eos = self.tokenizer.eos_token_id
        attention_mask = prompt_mask
        positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
        output = self.model(
            input_ids=prompt_ids, attention_mask=attention_mask, position_ids=positions, use_cache=True
        )
        cache = getattr(output, self._cache_keyword)
        next_position = positions[:, -1:] + 1  # left padding: the last column is real in every row
        finished = torch.zeros(rows, dtype=torch.bool, device=prompt_ids.device)
        tokens, logprobs, alive = [], [], []
        for _ in range(max_new_tokens):
            logits = output.logits[:, -1].float()  # (r v)
            token = self._pick(logits, temperature, top_p)
            token = torch.where(finished, self.tokenizer.pad_token_id, token)
            tokens.append(token)
            logprobs.append(logits.log_softmax(-1).gather(-1, token[:, None]).squeeze(-1))
            alive.append(~finished)
            finished = finished | (token == eos)
            if stop:
                finished = finished | self._stopped(torch.stack(tokens, 1), torch.stack(alive, 1), stop)
            if bool(finished.all()):
                break
            attention_mask = torch.cat([attention_mask, alive[-1].long()[:, None]], dim=1)
            output = self.model(
                input_ids=token[:, None],
                attention_mask=attention_mask,
                position_ids=next_position,
                use_cache=True,
                **{self._cache_keyword: cache},
            )
            cache = getattr(output, self._cache_keyword)
            next_position = next_position + 1
        completion, mask = torch.stack(tokens, 1), torch.stack(alive, 1)
        texts = [
            _cut_at_stop(self.tokenizer.decode(row[keep], skip_special_tokens=True), stop)[0]
            for row, keep in zip(completion, mask, strict=True)
        ]
        return completion, mask, torch.stack(logprobs, 1) * mask, texts

    def _stopped(self, tokens: Tensor, alive: Tensor, stop: Sequence[str]) -> Tensor:
        """``(r)`` rows whose generated text so far holds a stop string."""
        texts = [self.tokenizer.decode(row[keep]) for row, keep in zip(tokens, alive, strict=True)]
        return torch.tensor([_cut_at_stop(text, stop)[1] for text in texts], device=tokens.device)

    def _pick(self, logits: Tensor, temperature: float, top_p: float) -> Tensor:
        """``(r v)`` logits -> ``(r)`` tokens: greedy at temperature 0, else nucleus sampling
        (Holtzman et al. 2020, arXiv 1904.09751): the smallest set of top tokens with mass >= top_p."""
        if temperature == 0.0:
            return logits.argmax(-1)
        probs = (logits / temperature).softmax(-1)
        if top_p < 1.0:
            sorted_probs, order = probs.sort(-1, descending=True)
            # Drop a token when the mass before it already reaches top_p (the top token always stays).
            sorted_probs = sorted_probs.masked_fill(sorted_probs.cumsum(-1) - sorted_probs >= top_p, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        if self._generator is None or self._generator.device != logits.device:
            self._generator = torch.Generator(device=logits.device).manual_seed(self.seed)
        return torch.multinomial(probs, 1, generator=self._generator).squeeze(-1)

    # ----------------------------------------------------------------- score
    def score(self, prompts: Sequence[Prompt], continuations: Sequence[str]) -> Tensor:
        """``(b)`` summed log-probability of each continuation after its prompt.

        The continuation is tokenized on its own (no special tokens) and appended to the prompt's
        ids, so the boundary is exact. Carries gradients when grad is enabled.
        """
        if len(prompts) != len(continuations):
            raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
        start = time.perf_counter()
        encoded = [self.encode_prompt(prompt) for prompt in prompts]
        continued = [self.tokenizer(text, add_special_tokens=False)["input_ids"] for text in continuations]
        if any(not ids for ids in continued):
            raise ValueError("an empty continuation has no token to score")
        totals = []
        for first in range(0, len(encoded), self.batch_size):
            prompt_ids, prompt_mask = self._left_padded(encoded[first : first + self.batch_size])
            chunk = continued[first : first + self.batch_size]
            width = max(len(ids) for ids in chunk)
            completion = torch.full((len(chunk), width), self.tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros(len(chunk), width, dtype=torch.bool)
            for row, ids in enumerate(chunk):
                completion[row, : len(ids)] = torch.tensor(ids)
                mask[row, : len(ids)] = True
            logprobs = self.completion_logprobs(
                prompt_ids, prompt_mask, completion.to(self.device), mask.to(self.device)
            )
            totals.append(logprobs.sum(1))
        self.usage.add(
            len(prompts), sum(map(len, encoded)) + sum(map(len, continued)), 0, time.perf_counter() - start
        )
        return torch.cat(totals)


def _cache_keyword(model: nn.Module) -> str:
    """The KV-cache argument (and output field) of ``model``: ``cache`` from Transformers 5.24 on,
    ``past_key_values`` before (deprecated in 5.24, removed in 5.40)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _attach_adapter(
    model: nn.Module,
    adapter: AdapterName | None,
    adapter_path: str | None,
    targets: list[str] | str,
    r: int,
    alpha: float,
    num_blocks: int,
) -> nn.Module:
    if adapter is not None and adapter not in ("smoa", "lora"):
        raise ValueError(f"adapter must be 'smoa', 'lora' or None, got {adapter!r}")
    if adapter == "smoa":
        return inject_smoa(model, targets, r=r, num_blocks=num_blocks, alpha=alpha)
    if adapter == "lora":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(task_type="CAUSAL_LM", target_modules=targets, r=r, lora_alpha=alpha)
        return get_peft_model(model, config)
    if adapter_path is None:
        return model
    if read_peft_adapter_config(adapter_path).get("peft_type") == SMOA_PEFT_TYPE:
        return load_smoa(model, adapter_path)
    from peft import PeftModel

    return PeftModel.from_pretrained(model, adapter_path, is_trainable=True)


# ----------------------------------------------------------------------------------------------- HTTP
class LLMRequestError(RuntimeError):
    """An HTTP request to a served model failed for good (after its retries, or not retryable)."""


#: statuses worth retrying: rate limits and transient server errors.
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class OpenAICompatible:
    """A served model behind an OpenAI-compatible API (vLLM, llama.cpp server, TGI, OpenAI).

    ``generate`` posts one ``/chat/completions`` request per prompt (``n`` samples each, with
    ``logprobs: true``); ``score`` posts one legacy ``/completions`` request per pair with
    ``echo: true, max_tokens: 0, logprobs: 0`` and sums the log-probs of the tokens whose text offset
    falls in the continuation (vLLM and OpenAI's legacy API return them). Token ids are not part of
    these APIs, so ``Generation.token_ids`` is ``None``.

    A request that times out, cannot connect, or gets a 408 / 429 / 5xx is retried ``max_retries``
    times with exponential back-off (``backoff * 2**attempt`` seconds); any other HTTP error is
    raised at once with the server's message.

    Args:
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1``.
        model: the served model's name.
        api_key: sent as a bearer token (default: ``$OPENAI_API_KEY`` when set).
        timeout: seconds per attempt.
        max_retries: further attempts after the first.
        backoff: seconds before the first retry.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff: float = 0.5,
    ) -> None:
        if timeout <= 0 or max_retries < 0 or backoff < 0:
            raise ValueError(
                f"need timeout > 0, max_retries >= 0, backoff >= 0; got {timeout}, {max_retries}, {backoff}"
            )
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.timeout, self.max_retries, self.backoff = timeout, max_retries, backoff
        self.usage = LLMUsage()

    def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.base_url}{path}"
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        body = json.dumps(payload).encode()
        for attempt in range(self.max_retries + 1):
            request = urllib.request.Request(url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as error:
                message = error.read().decode(errors="replace")[:500]
                if error.code not in _RETRY_STATUSES or attempt == self.max_retries:
                    raise LLMRequestError(
                        f"POST {url}: HTTP {error.code} after {attempt + 1} attempt(s): {message}"
                    ) from error
            except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
                if attempt == self.max_retries:
                    raise LLMRequestError(f"POST {url}: {error} after {attempt + 1} attempt(s)") from error
            time.sleep(self.backoff * 2**attempt)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def generate(
        self,
        prompts: Sequence[Prompt],
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        n: int = 1,
        stop: Sequence[str] = (),
    ) -> Generation:
        """``n`` completions per prompt; see :class:`Generation` (``token_ids`` is ``None``)."""
        _check_sampling(max_new_tokens, temperature, top_p, n)
        start = time.perf_counter()
        texts, logprob_rows, prompt_tokens, completion_total = [], [], [], 0
        for prompt in prompts:
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
            payload = {
                "model": self.model,
                "messages": messages,
                "max_tokens": max_new_tokens,
                "temperature": temperature,
                "top_p": top_p,
                "n": n,
                "logprobs": True,
            }
            if stop:
                payload["stop"] = list(stop)
            reply = self._post("/chat/completions", payload)
            choices = sorted(reply.get("choices", []), key=lambda choice: choice.get("index", 0))
            if len(choices) != n:
                raise LLMRequestError(f"asked for n={n} completions, the server returned {len(choices)}")
            for choice in choices:
                content = (choice.get("logprobs") or {}).get("content")
                if content is None:
                    raise LLMRequestError(
                        "the server returned no logprobs.content (it must support 'logprobs': true)"
                    )
                texts.append(_cut_at_stop(choice["message"]["content"] or "", stop)[0])
                logprob_rows.append([float(entry["logprob"]) for entry in content])
            usage = reply.get("usage") or {}
            prompt_tokens += [int(usage.get("prompt_tokens", 0))] * n
            completion_total += int(usage.get("completion_tokens", sum(map(len, logprob_rows[-n:]))))
        logprobs, mask = _padded(logprob_rows)
        self.usage.add(len(prompts), sum(prompt_tokens[::n]), completion_total, time.perf_counter() - start)
        return Generation(texts, None, logprobs, mask, prompt_tokens)

    def score(self, prompts: Sequence[Prompt], continuations: Sequence[str]) -> Tensor:
        """``(b)`` summed log-probs of each continuation (string prompts only: the legacy
        completions API has no chat template)."""
        if len(prompts) != len(continuations):
            raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
        start = time.perf_counter()
        totals, tokens = [], 0
        for prompt, continuation in zip(prompts, continuations, strict=True):
            if not isinstance(prompt, str):
                raise ValueError("OpenAICompatible.score takes string prompts (the completions API)")
            payload = {
                "model": self.model,
                "prompt": prompt + continuation,
                "max_tokens": 0,
                "echo": True,
                "logprobs": 0,
            }
            logprobs = self._post("/completions", payload)["choices"][0]["logprobs"]
            offsets, values = logprobs["text_offset"], logprobs["token_logprobs"]
            # A token straddling the boundary belongs to the prompt; the first token has no log-prob.
            inside = [v for offset, v in zip(offsets, values, strict=True) if offset >= len(prompt)]
            if not inside or any(v is None for v in inside):
                raise LLMRequestError(f"no log-probs returned for the continuation {continuation!r}")
            totals.append(sum(inside))
            tokens += len(values)
        self.usage.add(len(prompts), tokens, 0, time.perf_counter() - start)
        return torch.tensor(totals, dtype=torch.float32)


# ------------------------------------------------------------------------------------------- scripted
Rule = tuple[str, str | Callable[[re.Match[str]], str]]


@dataclass
class ScriptedLLM:
    """A deterministic backend: the first rule whose regex matches the prompt writes the completion.

    A rule is ``(pattern, response)``: ``pattern`` is searched (``re.search``, DOTALL) in the prompt
    text (a chat prompt is its messages' contents joined by newlines); ``response`` is a template
    expanded with the match's groups (``"\\1"``, ``"\\g<name>"``) or a function of the match.
    Tokens are whitespace-separated words with ids in first-seen order. Every generated token has
    log-prob 0 (the script is certain); ``score`` gives 0 to each word of a continuation that agrees
    with the scripted completion, word by word, and ``miss_logprob`` to each that does not.

    Args:
        rules: the script, tried in order.
        default: the completion when no rule matches.
        miss_logprob: log-prob of a word the script would not write.
    """

    rules: Sequence[Rule] = ()
    default: str = ""
    miss_logprob: float = -20.0
    usage: LLMUsage = field(default_factory=LLMUsage)
    _vocabulary: dict[str, int] = field(default_factory=dict, repr=False)

    @staticmethod
    def _text(prompt: Prompt) -> str:
        return prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)

    def respond(self, prompt: Prompt) -> str:
        """The scripted completion of ``prompt`` (before ``max_new_tokens`` and stop strings)."""
        text = self._text(prompt)
        for pattern, response in self.rules:
            match = re.search(pattern, text, flags=re.DOTALL)
            if match is not None:
                return response(match) if callable(response) else match.expand(response)
        return self.default

    def generate(
        self,
        prompts: Sequence[Prompt],
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        n: int = 1,
        stop: Sequence[str] = (),
    ) -> Generation:
        """The scripted completion, ``n`` times per prompt, cut at ``max_new_tokens`` words and stops."""
        _check_sampling(max_new_tokens, temperature, top_p, n)
        texts, token_ids, prompt_tokens = [], [], []
        for prompt in prompts:
            text, _ = _cut_at_stop(" ".join(self.respond(prompt).split()[:max_new_tokens]), stop)
            ids = [self._vocabulary.setdefault(word, len(self._vocabulary)) for word in text.split()]
            texts += [text] * n
            token_ids += [ids] * n
            prompt_tokens += [len(self._text(prompt).split())] * n
        logprobs, mask = _padded([[0.0] * len(ids) for ids in token_ids])
        self.usage.add(len(prompts), sum(prompt_tokens[::n]), int(mask.sum()), 0.0)
        return Generation(texts, token_ids, logprobs, mask, prompt_tokens)

    def score(self, prompts: Sequence[Prompt], continuations: Sequence[str]) -> Tensor:
        if len(prompts) != len(continuations):
            raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
        totals = []
        for prompt, continuation in zip(prompts, continuations, strict=True):
            scripted, words = self.respond(prompt).split(), continuation.split()
            misses = sum(i >= len(scripted) or scripted[i] != word for i, word in enumerate(words))
            totals.append(misses * self.miss_logprob)
        self.usage.add(len(prompts), sum(len(self._text(p).split()) for p in prompts), 0, 0.0)
        return torch.tensor(totals, dtype=torch.float32)
