"""The LLM runtime: HFCausalLM on a tiny random Qwen2, OpenAICompatible on a loopback stub, ScriptedLLM."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
import torch

from lightning_rec.agents import HFCausalLM, LLMBackend, LLMRequestError, OpenAICompatible, ScriptedLLM
from lightning_rec.data.catalogue_corpus import render_catalogue_corpus, train_bpe_tokenizer
from lightning_rec.data.synthetic import SyntheticCatalogue

PROMPTS = [
    "History: Acme Classic Black Steel Teapot.\nNext:",
    "Item:",
    "History: Hooli Pro Pink Oak Keyboard; Wayne Eco Blue Wool Scarf; Stark Smart Red Glass Lamp.\nNext:",
]


@pytest.fixture(scope="module")
def tokenizer():
    catalogue = SyntheticCatalogue(num_users=40, num_items=30, num_categories=5, mean_length=8, seed=0)
    return train_bpe_tokenizer(render_catalogue_corpus(catalogue, heldout_fraction=0.1).train, 400)


def _tiny_qwen2(vocab_size: int, seed: int = 0):
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture
def llm(tokenizer) -> HFCausalLM:
    return HFCausalLM(_tiny_qwen2(len(tokenizer)), tokenizer=tokenizer, batch_size=8)


def _manual_logprobs(model, prompt_ids: list[int], completion_ids: list[int]) -> torch.Tensor:
    """Log-probs of the completion from one unpadded forward pass, no cache: the oracle."""
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1]
    return logits.log_softmax(-1).gather(-1, torch.tensor(completion_ids)[:, None]).squeeze(-1)


# ----------------------------------------------------------------------------------------- HFCausalLM
def test_every_backend_satisfies_the_protocol(llm):
    for backend in (llm, OpenAICompatible("http://127.0.0.1:1/v1", "m"), ScriptedLLM()):
        assert isinstance(backend, LLMBackend)


def test_generated_logprobs_equal_a_manual_forward_pass(llm):
    with torch.no_grad():
        generation = llm.generate(PROMPTS, max_new_tokens=6, temperature=0.0)
    assert generation.token_ids is not None and len(generation.texts) == 3
    for row, prompt in enumerate(PROMPTS):
        ids = generation.token_ids[row]
        expected = _manual_logprobs(llm.model, llm.encode_prompt(prompt), ids)
        torch.testing.assert_close(generation.logprobs[row, : len(ids)], expected, atol=1e-4, rtol=1e-4)
        # Greedy: each token is the argmax of the manual pass, so no other token is more likely.
        assert generation.texts[row] == llm.tokenizer.decode(ids, skip_special_tokens=True)


def test_left_padded_batch_equals_one_prompt_at_a_time(llm):
    with torch.no_grad():
        batch = llm.generate(PROMPTS, max_new_tokens=5, temperature=0.0)
        scores = llm.score(PROMPTS, [" Acme Eco", " Stark", " Wayne Pro Pink"])
        for row, prompt in enumerate(PROMPTS):
            alone = llm.generate([prompt], max_new_tokens=5, temperature=0.0)
            assert alone.token_ids[0] == batch.token_ids[row]
            width = len(alone.token_ids[0])
            torch.testing.assert_close(
                alone.logprobs[0, :width], batch.logprobs[row, :width], atol=1e-4, rtol=0
            )
            single = llm.score([prompt], [[" Acme Eco", " Stark", " Wayne Pro Pink"][row]])
            torch.testing.assert_close(single, scores[row : row + 1], atol=1e-4, rtol=0)


def test_score_is_the_summed_manual_logprob(llm):
    continuations = [" Acme Classic", " Hooli Pro Pink Oak Keyboard.", " Stark"]
    with torch.no_grad():
        scores = llm.score(PROMPTS, continuations)
    for row, (prompt, text) in enumerate(zip(PROMPTS, continuations, strict=True)):
        ids = llm.tokenizer(text, add_special_tokens=False)["input_ids"]
        expected = _manual_logprobs(llm.model, llm.encode_prompt(prompt), ids).sum()
        torch.testing.assert_close(scores[row], expected, atol=1e-4, rtol=1e-4)


def test_logprobs_with_grad_equal_the_sampling_ones(tokenizer):
    model = _tiny_qwen2(len(tokenizer))
    with torch.no_grad():
        sampled = HFCausalLM(model, tokenizer=tokenizer, seed=3).generate(PROMPTS, 6, temperature=1.0, n=2)
    with torch.enable_grad():
        trained = HFCausalLM(model, tokenizer=tokenizer, seed=3).generate(PROMPTS, 6, temperature=1.0, n=2)
    assert trained.token_ids == sampled.token_ids  # same seed, same samples
    assert trained.logprobs.requires_grad and not sampled.logprobs.requires_grad
    torch.testing.assert_close(trained.logprobs.detach(), sampled.logprobs, atol=1e-4, rtol=1e-4)
    assert len(sampled.texts) == 6 and sampled.mask.shape == sampled.logprobs.shape


@pytest.mark.parametrize("adapter", ["smoa", "lora"])
def test_an_adapter_trains_through_the_generated_logprobs(tokenizer, adapter):
    llm = HFCausalLM(_tiny_qwen2(len(tokenizer)), tokenizer=tokenizer, adapter=adapter, r=4, alpha=8.0)
    generation = llm.generate(PROMPTS[:2], max_new_tokens=4, temperature=1.0, n=2)
    (-generation.sequence_logprobs().mean()).backward()  # a REINFORCE-style loss
    trained = {name: p for name, p in llm.named_parameters() if p.requires_grad}
    assert trained and all(("smoa" in name or "lora" in name) for name in trained)
    # LoRA's B starts at zero, so A gets no gradient at step 0; B (and SMoA's B) always does.
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trained.values())
    assert all(p.grad is None for p in llm.parameters() if not p.requires_grad)


def test_a_tiny_nucleus_is_greedy_and_stop_strings_cut(llm):
    with torch.no_grad():
        greedy = llm.generate(PROMPTS, max_new_tokens=6, temperature=0.0)
        nucleus = llm.generate(PROMPTS, max_new_tokens=6, temperature=1.5, top_p=1e-6)
        assert nucleus.token_ids == greedy.token_ids
        # Stop at the text of the third greedy token: generation ends on that token, the text before it.
        row = greedy.token_ids[2]
        stop = llm.tokenizer.decode(row[2:3])
        assert stop.strip()
        stopped = llm.generate(PROMPTS[2:], max_new_tokens=6, temperature=0.0, stop=[stop])
    prefix = llm.tokenizer.decode(row[:3])
    assert stopped.texts[0] == prefix[: prefix.find(stop)]
    assert stopped.token_ids[0] == row[: len(stopped.token_ids[0])] and len(stopped.token_ids[0]) <= 3


def test_usage_counts_tokens_and_requests(llm):
    with torch.no_grad():
        generation = llm.generate(PROMPTS, max_new_tokens=4, temperature=1.0, n=3)
        llm.score(PROMPTS[:1], [" Acme"])
    prompt_lengths = [len(llm.encode_prompt(p)) for p in PROMPTS]
    assert generation.prompt_tokens == [length for length in prompt_lengths for _ in range(3)]
    assert llm.usage.requests == 4
    assert llm.usage.completion_tokens == int(generation.completion_tokens.sum())
    acme = len(llm.tokenizer(" Acme", add_special_tokens=False)["input_ids"])
    assert llm.usage.prompt_tokens == sum(prompt_lengths) + prompt_lengths[0] + acme
    assert llm.usage.seconds > 0


def test_loads_a_saved_folder_and_applies_a_chat_template(tokenizer, tmp_path):
    model = _tiny_qwen2(len(tokenizer))
    model.save_pretrained(tmp_path, safe_serialization=True)
    tokenizer.save_pretrained(tmp_path)
    loaded = HFCausalLM(str(tmp_path))
    assert not loaded.chat_template  # the catalogue tokenizer has none
    with torch.no_grad():
        expected = HFCausalLM(model, tokenizer=tokenizer).generate(PROMPTS, 4, temperature=0.0)
        assert loaded.generate(PROMPTS, 4, temperature=0.0).token_ids == expected.token_ids
    tokenizer = loaded.tokenizer
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    chat = HFCausalLM(loaded.model, tokenizer=tokenizer)
    assert chat.chat_template
    expected_ids = tokenizer("user: Item:\nassistant:", add_special_tokens=False)["input_ids"]
    assert chat.encode_prompt("Item:") == expected_ids
    assert chat.encode_prompt([{"role": "user", "content": "Item:"}]) == expected_ids
    with pytest.raises(ValueError, match="chat template"):
        loaded.encode_prompt([{"role": "user", "content": "Item:"}])


# ------------------------------------------------------------------------------------ OpenAI-compatible
class _Stub(BaseHTTPRequestHandler):
    """Chat completions answer with the prompt's words reversed, each word a token of log-prob -0.5·i."""

    failures_left = 0
    delay = 0.0
    status = 503
    requests: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, **payload})
        if type(self).delay:
            time.sleep(type(self).delay)
        if type(self).failures_left > 0:
            type(self).failures_left -= 1
            self.send_response(type(self).status)
            self.end_headers()
            self.wfile.write(b'{"error": "try later"}')
            return
        if self.path == "/v1/chat/completions":
            words = payload["messages"][-1]["content"].split()[::-1][: payload["max_tokens"]]
            content = [{"token": w, "logprob": -0.5 * i} for i, w in enumerate(words)]
            choices = [
                {"index": j, "message": {"content": " ".join(words)}, "logprobs": {"content": content}}
                for j in range(payload["n"])
            ]
            usage = {"prompt_tokens": len(words), "completion_tokens": len(words) * payload["n"]}
            body = {"choices": choices, "usage": usage}
        else:  # legacy completions with echo: one token per character, log-prob -1 each
            text = payload["prompt"]
            logprobs = {
                "text_offset": list(range(len(text))),
                "token_logprobs": [None] + [-1.0] * (len(text) - 1),
            }
            body = {"choices": [{"text": text, "logprobs": logprobs}]}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def stub():
    _Stub.failures_left, _Stub.delay, _Stub.status, _Stub.requests = 0, 0.0, 503, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_openai_compatible_generates_and_scores(stub):
    llm = OpenAICompatible(stub, model="served", api_key="k", max_retries=0)
    generation = llm.generate(["a b c", "d e"], max_new_tokens=2, temperature=0.7, n=2, stop=["zzz"])
    assert generation.texts == ["c b", "c b", "e d", "e d"] and generation.token_ids is None
    torch.testing.assert_close(generation.logprobs, torch.tensor([[0.0, -0.5]] * 4))
    assert generation.completion_tokens.tolist() == [2, 2, 2, 2]
    sent = _Stub.requests[0]
    assert sent["model"] == "served" and sent["temperature"] == 0.7 and sent["stop"] == ["zzz"]
    assert sent["logprobs"] is True and sent["messages"] == [{"role": "user", "content": "a b c"}]
    scores = llm.score(["ab", "x"], ["cde", "y"])
    assert scores.tolist() == [-3.0, -1.0]  # one -1 per continuation character
    assert llm.usage.requests == 4 and llm.usage.completion_tokens == 8


def test_openai_compatible_retries_transient_errors(stub):
    _Stub.failures_left = 2
    llm = OpenAICompatible(stub, model="m", max_retries=2, backoff=0.0)
    assert llm.generate(["x y"], max_new_tokens=4).texts == ["y x"]
    assert len(_Stub.requests) == 3


def test_openai_compatible_gives_up_after_its_retries(stub):
    _Stub.failures_left, _Stub.status = 10, 500
    with pytest.raises(LLMRequestError, match="HTTP 500 after 3 attempt"):
        OpenAICompatible(stub, model="m", max_retries=2, backoff=0.0).generate(["x"])
    assert len(_Stub.requests) == 3


def test_openai_compatible_does_not_retry_a_client_error(stub):
    _Stub.failures_left, _Stub.status = 10, 400
    with pytest.raises(LLMRequestError, match="HTTP 400 after 1 attempt"):
        OpenAICompatible(stub, model="m", max_retries=3, backoff=0.0).generate(["x"])
    assert len(_Stub.requests) == 1


def test_openai_compatible_times_out_and_retries(stub):
    _Stub.delay = 0.4
    llm = OpenAICompatible(stub, model="m", timeout=0.1, max_retries=1, backoff=0.0)
    with pytest.raises(LLMRequestError, match="timed out after 2 attempt"):
        llm.generate(["x"])
    assert len(_Stub.requests) == 2


# ------------------------------------------------------------------------------------------- scripted
def test_scripted_llm_follows_its_rules():
    llm = ScriptedLLM(
        rules=[
            (r"into (?P<category>\w+)", r"pick the \g<category> item . done"),
            ("rank", lambda m: "1 2 3"),
        ],
        default="no idea",
    )
    generation = llm.generate(
        ["recently into Tent", "please rank", "hello"], max_new_tokens=10, n=2, stop=[" ."]
    )
    assert generation.texts == ["pick the Tent item"] * 2 + ["1 2 3"] * 2 + ["no idea"] * 2
    assert generation.token_ids[0] == [0, 1, 2, 3] and generation.token_ids[2] == [4, 5, 6]
    assert torch.equal(generation.logprobs, torch.zeros_like(generation.logprobs))
    assert llm.generate(["please rank"], max_new_tokens=2).texts == ["1 2"]
    scores = llm.score(["please rank"] * 3, ["1 2 3", "1 3", "1 2 3 4"])
    assert scores.tolist() == [0.0, -20.0, -20.0]


@pytest.mark.parametrize("adapter", ["smoa", "lora"])
def test_a_saved_adapter_loads_from_adapter_path(tokenizer, tmp_path, adapter):
    from lightning_rec.blocks import save_smoa

    trained = HFCausalLM(_tiny_qwen2(len(tokenizer)), tokenizer=tokenizer, adapter=adapter, r=4, alpha=8.0)
    with torch.no_grad():
        for parameter in trained.parameters():
            if parameter.requires_grad:  # move the adapter off its identity start
                parameter.add_(0.05 * torch.randn_like(parameter))
    if adapter == "smoa":
        save_smoa(trained.model, tmp_path)
    else:
        trained.model.save_pretrained(tmp_path)
    loaded = HFCausalLM(_tiny_qwen2(len(tokenizer)), tokenizer=tokenizer, adapter_path=str(tmp_path))
    plain = HFCausalLM(_tiny_qwen2(len(tokenizer)), tokenizer=tokenizer)
    with torch.no_grad():
        expected = trained.score(PROMPTS, [" Acme"] * 3)
        torch.testing.assert_close(loaded.score(PROMPTS, [" Acme"] * 3), expected)
        assert not torch.allclose(plain.score(PROMPTS, [" Acme"] * 3), expected)
