"""The chat model wrapper: streaming, limits, stop strings, asyncio use and cancellation, on a tiny
random model; one `real_model` test on the bundled SmolLM2."""

from __future__ import annotations

import asyncio
import re
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch

from agent.reply.llm import THREAD_NAME, ChatModel, StopCutter, build_tiny_chat_model
from innkeeper.core.manifest import MANIFEST, write_manifest
from innkeeper.core.provision import LLM_NAME, ModelIntegrityError
from innkeeper.core.settings import Settings
from innkeeper.models.resolve import load_chat_model

MESSAGES = [
    {"role": "system", "content": "You are the front desk of a small hotel."},
    {"role": "user", "content": "Do you have a room for two nights?"},
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_dir(tiny_model_dir: Path) -> Path:
    return tiny_model_dir


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path) -> ChatModel:
    return ChatModel(tiny_dir)


def _generator_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME and t.is_alive()]


def _wait_for_no_generator_thread(timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while _generator_threads():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_tiny_model_is_deterministic_and_chatml(tiny_dir: Path, tmp_path: Path) -> None:
    again = build_tiny_chat_model(tmp_path / "again")
    for f in tiny_dir.iterdir():
        assert (again / f.name).read_bytes() == f.read_bytes(), f.name
    model = ChatModel(tiny_dir)
    assert model.tokenizer.eos_token == "<|im_end|>"
    prompt = model.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|im_start|>assistant\n")
    assert model.version.startswith("tiny-chat@") and not model.model.training


def test_stream_yields_text_and_honours_max_new_tokens(tiny: ChatModel) -> None:
    pieces = list(tiny.stream(MESSAGES, max_new_tokens=12))
    assert len(pieces) > 1 and all(isinstance(p, str) for p in pieces)

    inputs = tiny.tokenizer.apply_chat_template(
        MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.inference_mode():
        out = tiny.model.generate(**inputs, max_new_tokens=12, do_sample=False, pad_token_id=0)
    new_tokens = out[0, inputs["input_ids"].shape[1] :]
    assert len(new_tokens) == 12
    assert "".join(pieces) == tiny.tokenizer.decode(new_tokens, skip_special_tokens=True)
    assert len("".join(tiny.stream(MESSAGES, max_new_tokens=3))) < len("".join(pieces))


def test_stream_stops_at_stop_strings(tiny: ChatModel) -> None:
    full = "".join(tiny.stream(MESSAGES, max_new_tokens=40))
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    cut = "".join(tiny.stream(MESSAGES, max_new_tokens=40, stop=["never-generated", stop]))
    assert cut == full[: full.find(stop)]
    assert _wait_for_no_generator_thread()


def test_stop_strings_spanning_pieces_are_held_back() -> None:
    cutter = StopCutter(["<END>", "\nUser:"])
    emitted = [cutter.feed(p) for p in ["Hello <", "EN", "x", " there\nUs", "er: hi"]]
    assert emitted == ["Hello ", "", "<ENx", " there", ""]
    assert cutter.done
    assert "".join(emitted) == "Hello <ENx there"


def test_closing_the_stream_stops_generation(tiny: ChatModel) -> None:
    started = time.monotonic()
    stream = tiny.stream(MESSAGES, max_new_tokens=900)
    next(stream)
    assert _generator_threads()
    stream.close()
    assert _wait_for_no_generator_thread(0.5)
    assert time.monotonic() - started < 5


def test_astream_does_not_block_the_event_loop(tiny: ChatModel) -> None:
    async def main() -> tuple[str, int, float]:
        ticks = 0
        longest_gap = 0.0

        async def ticker() -> None:
            nonlocal ticks, longest_gap
            last = time.monotonic()
            while True:
                await asyncio.sleep(0.002)
                now = time.monotonic()
                ticks, longest_gap = ticks + 1, max(longest_gap, now - last)
                last = now

        ticking = asyncio.create_task(ticker())
        text = "".join([piece async for piece in tiny.astream(MESSAGES, max_new_tokens=300)])
        ticking.cancel()
        return text, ticks, longest_gap

    text, ticks, longest_gap = asyncio.run(main())
    assert text == "".join(tiny.stream(MESSAGES, max_new_tokens=300))
    assert ticks >= 10 and longest_gap < 0.5


def test_cancelling_the_astream_consumer_stops_generation(tiny: ChatModel) -> None:
    async def main() -> None:
        first_piece = asyncio.Event()

        async def consume() -> None:
            async for _ in tiny.astream(MESSAGES, max_new_tokens=900):
                first_piece.set()

        task = asyncio.create_task(consume())
        await first_piece.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The loop must stay responsive while the worker winds down.
        deadline = time.monotonic() + 0.5
        while _generator_threads() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    asyncio.run(main())
    assert not _generator_threads()


def test_concurrent_streams_take_turns(tiny: ChatModel) -> None:
    expected = "".join(tiny.stream(MESSAGES, max_new_tokens=30))
    results: list[str] = []
    workers = [
        threading.Thread(target=lambda: results.append("".join(tiny.stream(MESSAGES, max_new_tokens=30))))
        for _ in range(2)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert results == [expected, expected]


def test_version_comes_from_the_manifest(tiny_dir: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_dir, tmp_path / "copy")
    manifest = write_manifest(copy, LLM_NAME, [])
    assert (copy / MANIFEST).exists()
    assert ChatModel(copy).version == f"{LLM_NAME}@{manifest['files']['model.safetensors']['sha256'][:8]}"
    assert ChatModel(copy, version="pinned-v1").version == "pinned-v1"


def test_load_chat_model_sources(tiny_dir: Path, tmp_path: Path) -> None:
    assert load_chat_model(Settings(llm_model=str(tiny_dir), model_cache=tmp_path)).path == tiny_dir
    with pytest.raises(ModelIntegrityError, match="innkeeper models"):
        load_chat_model(Settings(llm_model="bundled", model_cache=tmp_path))
    with pytest.raises(FileNotFoundError, match="local Hugging Face cache"):
        load_chat_model(Settings(llm_model="no-such-org/no-such-model-xyz", model_cache=tmp_path))


@pytest.mark.real_model
@pytest.mark.parametrize("engine", ["torch", "ctranslate2"])
def test_bundled_smollm2_answers_in_english(engine: str, tmp_path) -> None:
    settings = Settings(llm_engine=engine, home=tmp_path)
    if not (settings.model_cache / LLM_NAME / MANIFEST).exists():
        pytest.skip(f"bundled SmolLM2 not provisioned in {settings.model_cache}: run `innkeeper models`")
    model = load_chat_model(settings)
    assert model.version.startswith(f"{LLM_NAME}@")
    if engine == "torch":
        assert model.model.config.tie_word_embeddings and not hasattr(model.model.config, "quantization_config")
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    reply = "".join(model.stream(messages, max_new_tokens=24))
    assert re.search(r"[A-Za-z]{3,}", reply), reply
    assert "Paris" in reply


def test_generation_errors_reach_the_consumer(tiny: ChatModel) -> None:
    with pytest.raises(RuntimeError, match="generation failed"):
        list(tiny.stream([{"role": "user"}], max_new_tokens=5))
    assert _wait_for_no_generator_thread()
