"""Serving a chat model with CTranslate2 on CPU (float32 or int8 weights), the fixed part of each prompt cached.

torch stays the training engine; a version is exported to CTranslate2's format (`export`) and served by
`Ct2ChatModel`, which offers what `agent.reply.llm.ChatModel` offers (stream, astream, complete). Measured
on this project's 2-core machines with SmolLM2-135M (`benchmarks/serving_engines.py`): a reading in about
half torch's time on one thread (float32, the same output; int8 is faster again but reads differently), and
a cached prefix (the instructions, the few-shot examples) turns a ~130-token prefill into the ~30 tokens of
the turn itself.

Constrained decoding: CTranslate2 takes no per-step token filter, so a constraint is enforced by checking
each token it proposes: a token the filter allows is kept; the first one it refuses stops the stream,
the next token is chosen from the full next-token distribution (one step with `return_logits_vocab`)
among the allowed ones, and decoding resumes from there. The output is what constrained greedy decoding
gives wherever the model's best token is allowed, and always satisfies the constraint.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from collections.abc import AsyncIterator, Collection, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from agent.reply.llm import Messages, StopCutter, TokenFilter, end_token_ids

SERVING_FORMAT = "ctranslate2"
MAX_CACHED_PREFIXES = 8  # distinct fixed prefixes kept (each holds its KV state); the agent has two


def export(hf_dir: str | Path, out_dir: str | Path, *, quantization: str = "int8") -> Path:
    """Convert a Hugging Face causal LM directory to CTranslate2's format (written whole, then moved in place).

    The tokenizer is not copied: the serving model takes it from the HF directory.
    """
    import ctranslate2

    out = Path(out_dir)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    ctranslate2.converters.TransformersConverter(str(hf_dir)).convert(str(partial), quantization=quantization)
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return out


class Ct2ChatModel:
    """A CTranslate2 generator with a Hugging Face tokenizer and chat template; one generation at a time.

    Generations are serialised with a lock, as ChatModel's are: on a few cores parallel decoding only
    splits the same cores between the conversations.
    """

    engine = SERVING_FORMAT

    def __init__(
        self,
        ct2_dir: str | Path,
        hf_dir: str | Path,
        *,
        version: str | None = None,
        tokenizer: Any | None = None,
        threads: int | None = None,
        compute_type: str = "float32",
    ) -> None:
        """Serve the export in `ct2_dir` of the model in `hf_dir` (its tokenizer, chat template and EOS ids).

        `tokenizer` reuses one already loaded for the same vocabulary; `compute_type` "float32" decodes as
        torch does (the export tests compare the two); "int8" is faster and changes some outputs.
        """
        import ctranslate2
        from transformers import AutoTokenizer

        from agent.reply.llm import model_version

        self.path = Path(hf_dir)
        self.version = version or model_version(self.path)
        self.tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(self.path)
        self.generator = ctranslate2.Generator(
            str(ct2_dir), device="cpu", compute_type=compute_type, intra_threads=threads or 1, inter_threads=1
        )
        self._eos_ids = end_token_ids(_configured_eos(self.path), self.tokenizer)
        self._lock = threading.Lock()
        self._prefixes: set[tuple[int, ...]] = set()

    @property
    def generating(self) -> bool:
        return self._lock.locked()

    def stream(
        self, messages: Messages, *, max_new_tokens: int, temperature: float = 0.0, stop: list[str] | None = None
    ) -> Iterator[str]:
        """Yield the reply's text as it is decoded; closing the iterator stops decoding at the next token."""
        cutter = StopCutter(stop)
        with self._lock:
            detokenizer = _Detokenizer(self.tokenizer)
            for token in self._tokens(self._prompt_ids(messages), max_new_tokens, temperature):
                if text := cutter.feed(detokenizer.add(token)):
                    yield text
                if cutter.done:
                    return
        if text := cutter.feed(detokenizer.flush()) + cutter.flush():
            yield text

    async def astream(
        self, messages: Messages, *, max_new_tokens: int, temperature: float = 0.0, stop: list[str] | None = None
    ) -> AsyncIterator[str]:
        """`stream` for asyncio: decoding runs in a worker thread; closing the consumer stops it."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        cancel = threading.Event()

        def produce() -> None:
            try:
                for piece in self.stream(messages, max_new_tokens=max_new_tokens, temperature=temperature, stop=stop):
                    if cancel.is_set():
                        return
                    loop.call_soon_threadsafe(queue.put_nowait, ("piece", piece))
                loop.call_soon_threadsafe(queue.put_nowait, ("end", None))
            except Exception as exc:  # handed to the consumer, which re-raises it
                if not cancel.is_set():
                    loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))

        worker = loop.run_in_executor(None, produce)
        try:
            while True:
                kind, value = await queue.get()
                if kind == "end":
                    return
                if kind == "error":
                    raise RuntimeError("language model generation failed") from value
                yield value
        finally:
            cancel.set()
            await asyncio.shield(worker)

    def complete(
        self,
        messages: Messages,
        *,
        max_new_tokens: int,
        allowed_tokens: TokenFilter | None = None,
        max_time: float | None = None,
    ) -> str:
        """The whole greedy reply (blocking); `allowed_tokens(ids so far)` constrains each step (see module doc);
        decoding stops after `max_time` seconds (what was decoded by then is returned)."""
        deadline = None if max_time is None else time.monotonic() + max_time
        with self._lock:
            prompt = self._prompt_ids(messages)
            if allowed_tokens is None:
                output = []
                for token in self._tokens(prompt, max_new_tokens, 0.0):
                    output.append(token)
                    if _passed(deadline):
                        break
            else:
                output = self._constrained(prompt, max_new_tokens, allowed_tokens, deadline)
        return self.tokenizer.decode([t for t in output if t not in self._eos_ids], skip_special_tokens=True)

    # ------------------------------------------------------------------ decoding

    def _prompt_ids(self, messages: Messages) -> tuple[list[int], list[int]]:
        """(fixed prefix, the rest): every message but the last is the prefix, when it tokenizes as one."""
        full = _template_ids(self.tokenizer, messages, generation_prompt=True)
        if len(messages) < 2:
            return [], full
        prefix = _template_ids(self.tokenizer, messages[:-1], generation_prompt=False)
        if full[: len(prefix)] != prefix:
            return [], full
        key = tuple(prefix)
        if key not in self._prefixes:
            if len(self._prefixes) >= MAX_CACHED_PREFIXES:
                return [], full  # prompts that vary in their prefix: caching would only grow memory
            self._prefixes.add(key)
        return prefix, full[len(prefix) :]

    def _tokens(self, prompt: tuple[list[int], list[int]], max_new_tokens: int, temperature: float) -> Iterator[int]:
        """Token ids as decoded (the end token excluded); closing the iterator stops the decoder."""
        prefix, rest = prompt
        options: dict[str, Any] = {"max_length": max_new_tokens, "end_token": self._eos_ids}
        if temperature > 0:
            options.update(sampling_topk=0, sampling_temperature=temperature)
        if prefix:
            options.update(static_prompt=self._pieces(prefix), cache_static_prompt=True)
        steps = self.generator.generate_tokens(self._pieces(rest), **options)
        try:
            for step in steps:
                yield step.token_id
        finally:
            steps.close()

    def _constrained(
        self, prompt: tuple[list[int], list[int]], max_new_tokens: int, allowed: TokenFilter, deadline: float | None
    ) -> list[int]:
        prefix, rest = prompt
        context = prefix + rest
        output: list[int] = []
        while len(output) < max_new_tokens:  # every round adds at least one token
            refused = False
            for token in self._tokens((prefix, rest + output), max_new_tokens - len(output), 0.0):
                if token not in set(allowed(context + output)):
                    refused = True
                    break
                output.append(token)
                if _passed(deadline):
                    return output
            if len(output) >= max_new_tokens or _passed(deadline):
                break
            permitted = set(allowed(context + output))
            # The decoder stopped on an end token: allowed only where the constraint is met.
            if not refused and permitted & set(self._eos_ids):
                break
            output.append(self._best_allowed(prefix, rest + output, permitted))
            if output[-1] in self._eos_ids:
                break
        return output

    def _best_allowed(self, prefix: list[int], rest: list[int], allowed: Collection[int]) -> int:
        """The allowed token the model scores highest at the next position."""
        if not allowed:
            raise RuntimeError("the constraint allows no next token")
        options: dict[str, Any] = {"max_length": 1, "return_logits_vocab": True, "include_prompt_in_result": False}
        if prefix:
            options.update(static_prompt=self._pieces(prefix), cache_static_prompt=True)
        result = self.generator.generate_batch([self._pieces(rest)], **options)[0]
        logits = np.asarray(result.logits[0]).reshape(-1)
        candidates = np.fromiter((t for t in allowed if t < logits.shape[0]), dtype=np.int64)
        return int(candidates[np.argmax(logits[candidates])])

    def _pieces(self, ids: list[int]) -> list[str]:
        return self.tokenizer.convert_ids_to_tokens(ids)


class _Detokenizer:
    """Ids to text as they come: each call returns only the new text, holding back a cut multi-byte character."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.said = 0

    def add(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        new, self.said = text[self.said :], len(text)
        return new

    def flush(self) -> str:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        new, self.said = text[self.said :], len(text)
        return new


def _passed(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


def _template_ids(tokenizer: Any, messages: Messages, *, generation_prompt: bool) -> list[int]:
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, return_dict=True)
    return list(encoded["input_ids"])


def _configured_eos(hf_dir: Path) -> int | list[int] | None:
    """The HF directory's generation-config EOS id(s), as ChatModel ends on them."""
    try:
        return json.loads((hf_dir / "generation_config.json").read_text()).get("eos_token_id")
    except (OSError, ValueError):
        return None
