"""Screenshots of the operator dashboard for the README (docs/dashboard/*.png), from a real run.

    .venv/bin/python scripts/dashboard_screenshots.py [--out docs/dashboard]

What it does, all for real on a throw-away home: seeds a SQLite database, places the text demo calls and one
voice call over the Twilio protocol (the bundled speech models; the live page is captured during it), stores
an operator correction, runs the nightly job twice on the tiny random chat model (2 steps each, open gate,
so the charts have two versions), then signs in as an admin in Debian's Chromium and captures each page.
The tiny model's numbers mean nothing; the pages are what is shown.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

from rich.console import Console

PASSWORD = "screenshots only"
OTHER_CALLS = (
    ("Is there a spa?", "Purple elephants.", "Can I talk to a person?"),
    ("What time is check-out?", "Thanks, bye."),
    ("Do you have parking?", "Is breakfast included?", "Goodbye."),
    ("I need a room for tomorrow night, just me.", "The standard queen.", "John Smith.", "617 555 0123",
     "Yes please.", "Bye."),
    ("Do you allow dogs?", "How far is the airport?", "That's all, bye."),
    ("What's your cancellation policy?", "Is there a pool?", "Bye now."),
)  # fmt: skip
PAGES = ("calls", "call", "review", "bookings", "hotel", "tuning", "models", "health", "audit", "phone")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/dashboard"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        capture(Path(tmp), args.out)


def capture(home: Path, out: Path) -> None:
    from agent.call.review import Corrections
    from agent.reply.llm import build_tiny_chat_model
    from agent.understanding.action import ActionIntent, ActionSlots, TurnAction
    from innkeeper.cli.demo import DEMO_SCRIPT, VOICE_DEMO_SCRIPT
    from innkeeper.core.accounts import Accounts
    from innkeeper.core.db.database import Database
    from innkeeper.core.hotel import load_hotel
    from innkeeper.core.settings import Settings
    from innkeeper.serve.app import create_app
    from innkeeper.serve.runtime import AgentRuntime
    from innkeeper.serve.speech import load_speech_models
    from innkeeper.simulation.caller_lines import lines_from_text
    from innkeeper.simulation.server_process import serve_in_thread
    from innkeeper.simulation.text_callers import say_lines
    from innkeeper.simulation.voice_caller import place_call
    from tuning.data.preview import preview_call
    from tuning.gate import OPEN_GATE_SETTINGS
    from tuning.nightly import run_nightly
    from tuning.pipeline import CorpusSize

    settings = Settings(
        home=home, today=date(2026, 11, 26), database_url=f"sqlite:///{home / 'innkeeper.db'}",
        llm_model=str(build_tiny_chat_model(home / "tiny")), voice_llm=False, registry_poll_s=0,
        nightly_eval_size="tiny", gate_understanding_dialogues=2, nightly_heldout_fraction=0.3,
        **OPEN_GATE_SETTINGS,
    )  # fmt: skip
    db = Database.from_settings(settings)
    db.migrate()
    db.seed(load_hotel(settings.hotel_file))
    Accounts(db).add("alice", PASSWORD, "admin")
    runtime = AgentRuntime(settings, llm=None, db=db)
    for script in (DEMO_SCRIPT, *OTHER_CALLS):
        asyncio.run(say_lines(runtime, script))
    first_call = runtime.call_log.search(limit=20)[-1]
    reading = TurnAction(intents=[ActionIntent.BOOK], slots=ActionSlots(check_in="Dec. 7", nights=4))
    Corrections(db).add(first_call.id, 2, reading, author="alice", note="arrival and nights in one sentence")
    size = CorpusSize(text_tokens=256, chats=2, safety=2, max_len=96)
    for force in (False, True):
        fast = {"steps": 2, "batch_size": 2, "eval_every": 1, "progress": False, "lr": 1e-3}
        report = run_nightly(settings, db=db, size=size, force=force, console=Console(quiet=True), overrides=fast)
        print(f"nightly {report.run_id}: {report.status} {report.note}")

    models = load_speech_models(settings)
    app = create_app(settings, runtime=runtime, models=models, training_view=preview_call)
    with serve_in_thread(app) as host:
        url = f"http://{host}"
        lines = lines_from_text(VOICE_DEMO_SCRIPT, models.synthesizer)
        voice = threading.Thread(
            target=lambda: asyncio.run(place_call(f"ws://{host}/twilio/stream", lines, protocol="twilio"))
        )
        _browse(url, out, voice, runtime)


def _browse(url: str, out: Path, voice: threading.Thread, runtime) -> None:
    from playwright.sync_api import sync_playwright

    from innkeeper.simulation.browser import CHROMIUM, CHROMIUM_ARGS

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_context(viewport={"width": 1280, "height": 860}).new_page()
        page.goto(f"{url}/login")
        page.screenshot(path=str(out / "login.png"))
        page.fill("input[name=username]", "alice")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{url}/calls")
        page.goto(f"{url}/live")
        voice.start()
        page.wait_for_selector(".live-call .line.agent", timeout=60_000)
        time.sleep(6)  # a few turns in
        page.screenshot(path=str(out / "live.png"))
        voice.join()
        for name in PAGES:
            if name == "call":
                page.goto(f"{url}/calls")
                page.click("#calls tr:nth-child(2) a")  # the newest call: the voice one
                page.locator(".turn.caller summary").first.click()
            else:
                page.goto(f"{url}/{name}")
            page.screenshot(path=str(out / f"{name}.png"), full_page=name not in ("call", "tuning"))
        browser.close()
    print(f"screenshots in {out}")


if __name__ == "__main__":
    main()
