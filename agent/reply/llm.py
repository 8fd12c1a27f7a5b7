"""The language model behind the dialogue brain: load a local chat model and stream its replies,
synchronously or for asyncio, with prompt cancellation (barge-in stops generation mid-reply)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AsyncTextIteratorStreamer,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)
from transformers.generation.streamers import TextStreamer

from innkeeper.core.manifest import MANIFEST

Messages = list[dict[str, str]]
TokenFilter = Callable[[list[int]], Collection[int]]  # token ids so far → the tokens allowed next

THREAD_NAME = "innkeeper-llm-generate"
# How often a generation waiting for the model lock checks whether it was cancelled meanwhile.
_LOCK_POLL_S = 0.05

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ChatModel:
    """A causal LM with its tokenizer and chat template, streaming replies from a worker thread.

    Generation is serialised with one lock per model: torch inference from two threads would be safe,
    but on a few CPU cores parallel decoding only splits the same cores between the conversations,
    while taking turns keeps each reply's latency predictable and the code simple.
    """

    def __init__(
        self,
        path_or_id: str | Path,
        *,
        threads: int | None = None,
        version: str | None = None,
        tokenizer: Any | None = None,
    ):
        """Load the model at `path_or_id`; `tokenizer` reuses one already loaded for the same vocabulary."""
        directory, label = resolve_path_or_id(path_or_id)
        if threads:
            # Process-wide: torch has one intra-op pool shared by every model in the process.
            torch.set_num_threads(threads)
        self.path = directory
        self.version = version or _version(directory, label)
        self.tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(directory)
        # float32 even for half-precision checkpoints: bf16 was not faster on CPU here and it changes
        # greedy output (see innkeeper/core/convert.py).
        self.model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
        self._eos_ids = eos_token_ids(self.model, self.tokenizer)
        self._lock = threading.Lock()

    @property
    def generating(self) -> bool:
        """Whether a generation holds the model now (a swap's loader pauses meanwhile)."""
        return self._lock.locked()

    def stream(
        self, messages: Messages, *, max_new_tokens: int, temperature: float = 0.0, stop: list[str] | None = None
    ) -> Iterator[str]:
        """Yield the reply's text pieces as they are decoded; closing the iterator stops generation."""
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        run = self._start(messages, streamer, max_new_tokens, temperature)
        cutter = StopCutter(stop)
        try:
            for piece in streamer:
                if text := cutter.feed(piece):
                    yield text
                if cutter.done:
                    return
            if text := cutter.flush():
                yield text
            run.raise_failure()
        finally:
            run.cancel.set()
            # Waits for at most the forward pass in flight (prefill or one decoding step).
            run.thread.join()

    async def astream(
        self, messages: Messages, *, max_new_tokens: int, temperature: float = 0.0, stop: list[str] | None = None
    ) -> AsyncIterator[str]:
        """`stream` for asyncio: never blocks the loop; cancelling or closing the consumer stops generation."""
        streamer = AsyncTextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        run = self._start(messages, streamer, max_new_tokens, temperature)
        cutter = StopCutter(stop)
        try:
            async for piece in streamer:
                if text := cutter.feed(piece):
                    yield text
                if cutter.done:
                    return
            if text := cutter.flush():
                yield text
            run.raise_failure()
        finally:
            run.cancel.set()
            # Joined off the loop: at most one decoding step, and no worker is left inside torch when the
            # process exits (a daemon thread killed mid-kernel aborts the interpreter).
            await asyncio.to_thread(run.thread.join)

    def complete(
        self,
        messages: Messages,
        *,
        max_new_tokens: int,
        allowed_tokens: TokenFilter | None = None,
        max_time: float | None = None,
    ) -> str:
        """The whole greedy reply at once (blocking: run it off the event loop); `allowed_tokens(ids so far)`,
        given the prompt's and the reply's token ids, constrains each step to the tokens it returns; decoding
        stops after `max_time` seconds (what was decoded by then is returned)."""
        config = self.generation_config(max_new_tokens, 0.0)
        config.max_time = max_time
        inputs = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        allowed = None if allowed_tokens is None else lambda _batch, ids: list(allowed_tokens(ids.tolist()))
        with self._lock, torch.inference_mode():
            output = self.model.generate(**inputs, generation_config=config, prefix_allowed_tokens_fn=allowed)
        return self.tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    def _start(self, messages: Messages, streamer: TextStreamer, max_new_tokens: int, temperature: float) -> _Run:
        run = _Run()
        config = self.generation_config(max_new_tokens, temperature)
        # Daemon: a generation abandoned by its consumer must never keep the process alive.
        run.thread = threading.Thread(
            target=self._generate, args=(messages, streamer, config, run), name=THREAD_NAME, daemon=True
        )
        run.thread.start()
        return run

    def generation_config(self, max_new_tokens: int, temperature: float) -> GenerationConfig:
        """The settings `stream` generates with (greedy when `temperature` is 0)."""
        sampling = temperature > 0
        return GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=sampling,
            temperature=temperature if sampling else None,
            top_p=None,
            top_k=None,
            eos_token_id=self._eos_ids,
            pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self._eos_ids[0],
        )

    def _generate(self, messages: Messages, streamer: TextStreamer, config: GenerationConfig, run: _Run) -> None:
        """Worker thread: tokenize, wait for the model, generate into the streamer."""
        try:
            if not self._acquire(run.cancel):
                streamer.end()
                return
            try:
                inputs = self.tokenizer.apply_chat_template(
                    messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
                )
                with torch.inference_mode():
                    self.model.generate(
                        **inputs,
                        generation_config=config,
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([_Cancelled(run.cancel)]),
                    )
            finally:
                self._lock.release()
        except Exception as exc:  # handed to the consumer, which re-raises it
            run.failure = exc
            # A cancelled consumer is gone (its event loop may already be closed): nobody to wake.
            if not run.cancel.is_set():
                streamer.end()

    def _acquire(self, cancel: threading.Event) -> bool:
        """Take the model lock unless the stream is cancelled while waiting for it."""
        while not self._lock.acquire(timeout=_LOCK_POLL_S):
            if cancel.is_set():
                return False
        return True


@dataclass
class _Run:
    """One generation in flight: its worker thread, cancel flag and failure, if any."""

    cancel: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread = field(init=False)
    failure: Exception | None = None

    def raise_failure(self) -> None:
        if self.failure is not None:
            raise RuntimeError("language model generation failed") from self.failure


class _Cancelled(StoppingCriteria):
    """Stops generate() at the next token once the consumer has gone away (barge-in, stop string)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class StopCutter:
    """Cuts a text stream before the first stop string, holding back only a tail that could start one."""

    def __init__(self, stop: list[str] | None):
        self.stop = [s for s in stop or [] if s]
        self.pending = ""
        self.done = False

    def feed(self, piece: str) -> str:
        """The text that is now safe to emit."""
        self.pending += piece
        hits = [i for s in self.stop if (i := self.pending.find(s)) >= 0]
        if hits:
            self.done = True
            return self._take(min(hits))
        return self._take(len(self.pending) - self._partial_stop_length())

    def flush(self) -> str:
        return self._take(len(self.pending))

    def _take(self, n: int) -> str:
        text, self.pending = self.pending[:n], ("" if self.done else self.pending[n:])
        return text

    def _partial_stop_length(self) -> int:
        """Length of the longest tail of the pending text that is a proper prefix of a stop string."""
        return max(
            (
                n
                for s in self.stop
                for n in range(1, min(len(s), len(self.pending) + 1))
                if self.pending.endswith(s[:n])
            ),
            default=0,
        )


def build_tiny_chat_model(directory: Path) -> Path:
    """Write a tiny, randomly initialised Llama chat model with a real ChatML tokenizer (for tests).

    Built offline and deterministically: same files on every call, global RNG state untouched.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    directory = Path(directory)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_TINY_CORPUS.split("\n"), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    ids = {
        name: tokenizer.convert_tokens_to_ids(tok) for name, tok in zip(("pad", "bos", "eos"), specials, strict=True)
    }
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        initializer_range=0.5,
        tie_word_embeddings=True,
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"]
    )
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def resolve_path_or_id(path_or_id: str | Path) -> tuple[Path, str]:
    """A local model directory and a label for it; hub ids come from the local cache only."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path, path.name
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(str(path_or_id), local_files_only=True)), str(path_or_id)
    except (LocalEntryNotFoundError, HFValidationError):
        raise FileNotFoundError(
            f"language model {str(path_or_id)!r} is neither a local model directory nor a hub id in the local "
            "Hugging Face cache (nothing is downloaded at run time); set INNKEEPER_LLM_MODEL to 'bundled', "
            "a model directory, or a hub id you have cached"
        ) from None


def model_version(path_or_id: str | Path) -> str:
    """The label a `ChatModel` of this model gets when no version is given."""
    return _version(*resolve_path_or_id(path_or_id))


def _version(directory: Path, label: str) -> str:
    """Name@weights-hash from a provisioning manifest, else directory-name@config-hash."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        return f"{manifest['name']}@{manifest['files']['model.safetensors']['sha256'][:8]}"
    except (OSError, ValueError, KeyError, TypeError):
        config_hash = hashlib.sha256((directory / "config.json").read_bytes()).hexdigest()
        return f"{label}@{config_hash[:8]}"


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every token that ends a reply: the model's generation EOS ids plus the tokenizer's (ChatML end)."""
    return end_token_ids(model.generation_config.eos_token_id, tokenizer)


def end_token_ids(configured: int | list[int] | None, tokenizer: Any) -> list[int]:
    """The generation config's EOS id(s) and the tokenizer's, each once."""
    ids = configured if isinstance(configured, list) else [configured]
    ids = [i for i in [*ids, tokenizer.eos_token_id] if i is not None]
    return list(dict.fromkeys(ids))


_TINY_CORPUS = """\
Good evening and thank you for calling the Harbor View Inn, how can I help you today?
I would like to book a room for two nights next weekend, arriving on Friday.
We have a standard queen room, a deluxe king room with a harbor view, and the harbor suite.
The standard room is one hundred forty nine dollars a night, and one hundred seventy nine on weekends.
Breakfast is served from six thirty to ten thirty in the morning in the Galley restaurant.
Check in is at three in the afternoon and check out is at eleven in the morning.
Can I bring my dog? Dogs under forty pounds are welcome in standard rooms for a small fee.
Free cancellation until forty eight hours before arrival; after that the first night is charged.
We never take card numbers by phone. We send a secure payment link by text message instead.
What is your confirmation code and your surname, please? Thank you, one moment while I check.
The airport is four miles away and a free shuttle runs every hour from five in the morning.
Parking is twenty five dollars a night, and valet parking is thirty eight dollars a night.
Is there a pool? Yes, an indoor pool and a hot tub, open from seven in the morning until ten at night.
Wi-Fi is free throughout the hotel, and the fitness room is open all day and all night.
Your booking is confirmed: two adults, one deluxe king room, from the twelfth to the fourteenth.
Is there anything else I can help you with? Goodbye, and have a wonderful stay with us.
Sorry, I did not catch that. Could you repeat the dates, please? Of course, no problem at all.
0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 20 25 30 31 January February March April May June July
August September October November December Monday Tuesday Wednesday Thursday Saturday Sunday
"""
