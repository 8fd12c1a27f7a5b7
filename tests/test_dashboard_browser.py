"""The operator dashboard in a real browser: Debian's Chromium, headless, driven by Playwright against a live
`innkeeper serve` app on a real database.

An operator signs in, finds a call, corrects how a caller turn was understood (and the nightly curation picks
the correction up as a redacted training example), excludes the call from training, and is refused a model
promotion; an admin promotes a registered version and rolls it back, re-entering the password, and the
running agent serves it. `make test` installs Chromium from Debian's packages; without it these tests skip.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from agent.call.review import Corrections
from innkeeper.core.accounts import Accounts
from innkeeper.core.settings import Settings
from innkeeper.models.registry import ModelRegistry
from innkeeper.serve.app import create_app
from innkeeper.serve.runtime import AgentRuntime
from innkeeper.simulation.browser import CHROMIUM, CHROMIUM_ARGS, chromium_available
from innkeeper.simulation.text_callers import say_lines
from tests.conftest import serving
from tests.test_dashboard import BOOKING_CALL, PASSWORD, TODAY, StubSpeech, _place_call


@pytest.fixture(scope="module")
def playwright() -> Iterator[object]:
    """One Playwright driver per module (its sync API runs an event loop in this thread)."""
    if not chromium_available():
        pytest.skip(f"no Chromium at {CHROMIUM}: `make test` installs Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright) -> Iterator[object]:
    chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield chromium
    chromium.close()


def outside_the_browsers_loop(coroutine):
    """Playwright's sync API runs an event loop in this thread: run other async work in another."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def _replies(runtime: AgentRuntime, lines: list[str]) -> list[str]:
    return (await say_lines(runtime, lines)).replies


def sign_in(browser, url: str, username: str):
    page = browser.new_context().new_page()
    page.goto(f"{url}/calls")
    assert "/login" in page.url  # sent to sign in first
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/calls")
    return page


def test_an_operator_corrects_a_turn_and_excludes_the_call_in_the_browser(browser, tmp_path, sqlite_db):
    from tuning.data.curate import curate

    settings = Settings(home=tmp_path, today=TODAY, database_url=sqlite_db.engine.url.render_as_string(False),
                        llm_model="none", registry_poll_s=0)  # fmt: skip
    runtime = AgentRuntime(settings, llm=None, db=sqlite_db)
    Accounts(sqlite_db).add("oscar", PASSWORD, "operator")
    call_id = outside_the_browsers_loop(_place_call(runtime, BOOKING_CALL))
    with serving(create_app(settings, runtime=runtime, models=StubSpeech())) as host:
        url = f"http://{host}"
        page = sign_in(browser, url, "oscar")
        assert "oscar (operator)" in page.inner_text("#who")
        page.fill("input[name=q]", "deluxe king")
        page.click("text=Filter")
        page.click(f"a:text('{call_id[:8]}')")
        page.wait_for_url(f"{url}/calls/{call_id}")
        assert "two nights from December 7" in page.inner_text("#turn-0")

        turn = page.locator("#turn-0")
        turn.locator("summary").click()
        turn.locator("input[value=book]").check()
        turn.locator("input[name=slot_check_in]").fill("December 7")
        turn.locator("input[name=slot_nights]").fill("2")
        turn.locator("input[name=note]").fill("the stay length was missed")
        turn.locator("text=Save correction").click()
        page.wait_for_selector("#turn-0 .correction")
        assert "Corrected by oscar" in page.inner_text("#turn-0 .correction")

        [stored] = Corrections(sqlite_db).list(call_id=call_id)
        assert stored.author == "oscar" and stored.action.slots.nights == 2
        # the next nightly run's curation turns it into a training example of the reading
        readings = curate(sqlite_db, settings, since=None).readings  # (the call's booking labels other turns)
        [example] = [e for e in readings if e.example_id == f"{call_id}#{stored.turn_id}"]
        assert example.action.slots.nights == 2 and example.action.slots.check_in == "December 7"

        page.click("text=Exclude from training")
        page.wait_for_selector("#training:text('excluded from training')")
        assert runtime.call_log.call_summary(call_id).training == "excluded"
        assert curate(sqlite_db, settings, since=None).call_ids == []

        page.goto(f"{url}/models")
        assert "Only admins promote" in page.content()
        # even a hand-made request with the page's own CSRF token is refused for an operator
        status = page.evaluate(
            """async () => {
                const csrf = JSON.parse(document.body.getAttribute('hx-headers'))['X-CSRF-Token'];
                const body = new URLSearchParams({csrf_token: csrf, password: 'x', reason: 'x'});
                return (await fetch('/models/rollback', {method: 'POST', body})).status;
            }"""
        )
        assert status == 403
        page.goto(f"{url}/audit")
        assert "review.correct" in page.inner_text("#audit") and "call.training" in page.inner_text("#audit")

        # a new fact, saved in the browser, is what the agent says in the next call
        page.goto(f"{url}/hotel")
        new_row = page.locator("#facts tr.new").first
        new_row.locator("input").fill("spa")
        new_row.locator("textarea").fill("Our spa is open daily from 9 AM to 8 PM.")
        page.fill("input[name=note]", "the spa opened")
        page.click("text=Save a new version")
        page.wait_for_selector("#hotel-history td:text('the spa opened')")
        replies = outside_the_browsers_loop(_replies(runtime, ["Do you have a spa?", "bye"]))
        assert "Our spa is open daily from 9 AM to 8 PM." in replies[0]


@pytest.mark.usefixtures("one_torch_thread")
def test_an_admin_promotes_and_rolls_back_in_the_browser(browser, tmp_path, sqlite_db, tiny_model_dir):
    from tests.test_hot_swap import make_artifact, register

    settings = Settings(home=tmp_path, today=TODAY, database_url=sqlite_db.engine.url.render_as_string(False),
                        llm_model=str(tiny_model_dir), voice_llm=True, registry_poll_s=0)  # fmt: skip
    registry = ModelRegistry.from_settings(settings, db=sqlite_db)
    tuned = register(registry, make_artifact(tiny_model_dir, tmp_path / "delta", seed=1))
    Accounts(sqlite_db).add("alice", PASSWORD, "admin")
    app = create_app(settings, models=StubSpeech())
    with serving(app) as host:
        url = f"http://{host}"
        runtime: AgentRuntime = app.state.services.runtime
        base_version = runtime.slot.version
        page = sign_in(browser, url, "alice")
        page.goto(f"{url}/models")
        row = page.locator(f"#versions tr:has-text('{tuned.id}')")
        row.locator("input[name=reason]").fill("better reading in review")
        row.locator("input[name=password]").fill("wrong password")
        row.locator("text=Promote").click()
        assert runtime.slot.version == base_version  # refused: nothing swapped

        page.goto(f"{url}/models")
        row = page.locator(f"#versions tr:has-text('{tuned.id}')")
        row.locator("input[name=reason]").fill("better reading in review")
        row.locator("input[name=password]").fill(PASSWORD)
        row.locator("text=Promote").click()
        page.wait_for_selector(f"#serving:text('{tuned.id}')", timeout=120_000)
        assert tuned.id in runtime.slot.version

        page.fill("form[action='/models/rollback'] input[name=reason]", "back to the base for the test")
        page.fill("form[action='/models/rollback'] input[name=password]", PASSWORD)
        page.click("text=Roll back to the previous version")
        page.wait_for_selector(f"#serving:text('{base_version}')", timeout=120_000)
        assert runtime.slot.version == base_version
        events = [(e["action"], e["actor"]) for e in registry.events()]
        assert ("promoted", "alice") in events


@pytest.mark.real_model
def test_staff_book_a_room_by_talking_to_the_agent_from_the_browser_while_another_page_watches_live(
    playwright, tmp_path, sqlite_db, caller_voice
):
    """The browser-call page with Chromium's fake microphone (a WAV of the caller's lines, spoken by the bundled
    voice through a phone line, with pauses for the agent's replies) books a room end to end; the live page,
    open beside it, shows the call's lines as they are said."""
    from innkeeper.cli.demo import VOICE_DEMO_SCRIPT
    from innkeeper.serve.speech import load_speech_models
    from innkeeper.simulation.caller_lines import lines_from_text

    settings = Settings(home=tmp_path, today=TODAY, database_url=sqlite_db.engine.url.render_as_string(False),
                        llm_model="none", registry_poll_s=0, partial_transcripts_ms=None)  # fmt: skip
    models = load_speech_models(settings)
    microphone = tmp_path / "caller.wav"
    write_caller_wav(microphone, lines_from_text(VOICE_DEMO_SCRIPT, caller_voice))
    runtime = AgentRuntime(settings, llm=None, db=sqlite_db)
    Accounts(sqlite_db).add("oscar", PASSWORD, "operator")
    fake_microphone = [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={microphone}",
        "--autoplay-policy=no-user-gesture-required",
    ]
    with serving(create_app(settings, runtime=runtime, models=models)) as host:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS + fake_microphone)
        url = f"http://{host}"
        watcher = sign_in(browser, url, "oscar")
        watcher.goto(f"{url}/live")
        watcher.wait_for_selector("#live-status:text('Following live calls.')")

        phone = sign_in(browser, url, "oscar")
        phone.goto(f"{url}/phone")
        phone.click("#call-button")
        phone.wait_for_selector("#call-state:text('call ended')", timeout=240_000)
        said = phone.inner_text("#call-lines")
        watched = watcher.inner_text("#live-calls")
        # both legs of the recording play in the call's page
        [call] = runtime.call_log.search()
        watcher.goto(f"{url}/calls/{call.id}")
        played = watcher.evaluate(PLAY_EVERY_AUDIO)
        browser.close()

    # the speech engines measured their speed on this call (the health page and /metrics show it)
    assert models.recognizer.speed.runs > 0 and models.recognizer.speed.value > 0
    assert models.synthesizer.speed.audio_s > 5
    bookings = runtime.tools.list_bookings()
    assert [(b.first_name, b.last_name, b.guests) for b in bookings] == [("John", "Smith", 2)], said
    assert "deluxe" in bookings[0].room_type.lower()
    assert (bookings[0].check_out - bookings[0].check_in).days == 4
    assert "Agent:" in said and "You:" in said
    # the live page showed the same call, line by line, and its end
    assert "Caller:" in watched and "Agent:" in watched and "ended" in watched
    assert len(played) == 2, played  # caller and agent legs
    for leg in played:
        assert leg["error"] is None and leg["duration"] > 10 and leg["currentTime"] > 0.5, played


# Loads and plays every <audio> of the page for a moment; what each reports (duration, position reached, error).
PLAY_EVERY_AUDIO = """async () => {
  const results = [];
  for (const audio of document.querySelectorAll("audio")) {
    audio.muted = true;
    let error = null;
    try { await audio.play(); } catch (e) { error = String(e); }
    await new Promise(resolve => setTimeout(resolve, 1500));
    audio.pause();
    results.push({src: audio.currentSrc, duration: audio.duration, currentTime: audio.currentTime,
                  error: error || (audio.error && audio.error.message) || null});
  }
  return results;
}"""


def write_caller_wav(path, lines, *, lead_s: float = 2.0, pause_s: float = 8.5) -> None:
    """The caller's lines in one 16 kHz WAV, each followed by a pause long enough for the agent's reply."""
    import wave

    import numpy as np

    from telephony.resample import resample

    rate = 16_000
    parts = [np.zeros(int(lead_s * rate), np.int16)]
    for line in lines:
        parts += [resample(line.audio, line.rate, rate).astype(np.int16), np.zeros(int(pause_s * rate), np.int16)]
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(np.concatenate(parts).tobytes())


@pytest.mark.real_model
@pytest.mark.usefixtures("one_torch_thread")
def test_a_new_operator_watches_a_call_fixes_a_turn_and_an_admin_promotes_the_night_that_learned_it(
    browser, tmp_path, sqlite_db, tiny_model_dir, caller_voice
):
    """The whole loop in the browser, as a new operator meets it: a phone call is followed live, its first turn
    is corrected on the call's page (which shows what training will see), an admin starts the nightly run from
    the tuning page — a separate process that curates the correction, trains, evaluates and registers a
    candidate — and promotes that candidate; the running agent then serves it."""
    import time

    from innkeeper.serve.speech import load_speech_models
    from innkeeper.simulation.call_report import call_url
    from innkeeper.simulation.caller_lines import lines_from_text
    from innkeeper.simulation.voice_caller import place_call
    from tuning.data.preview import preview_call
    from tuning.gate import OPEN_GATE_SETTINGS

    settings = Settings(home=tmp_path, today=TODAY, database_url=sqlite_db.engine.url.render_as_string(False),
                        llm_model=str(tiny_model_dir), voice_llm=True, registry_poll_s=0, nightly_steps=2,
                        tune_batch_size=2, nightly_eval_size="tiny", tune_eval_size="tiny", tune_reading_examples=4,
                        gate_understanding_dialogues=0, nightly_heldout_fraction=0.0, nightly_promote=False,
                        partial_transcripts_ms=None, **OPEN_GATE_SETTINGS)  # fmt: skip
    models = load_speech_models(settings)
    accounts = Accounts(sqlite_db)
    accounts.add("nora", PASSWORD, "operator")
    accounts.add("alice", PASSWORD, "admin")
    app = create_app(settings, models=models, training_view=preview_call)
    with serving(app) as host:
        url = f"http://{host}"
        runtime: AgentRuntime = app.state.services.runtime
        # 1. the new operator follows the live calls while one comes in over the phone protocol
        page = sign_in(browser, url, "nora")
        page.goto(f"{url}/live")
        page.wait_for_selector("#live-status:text('Following live calls.')")
        lines = lines_from_text(["Do you have free parking?", "Thanks, that's all, bye."], caller_voice)
        report = outside_the_browsers_loop(place_call(call_url(f"ws://{host}", "plain"), lines, protocol="plain"))
        assert all(turn.answered for turn in report.turns), report
        page.wait_for_selector("#live-calls :text('ended')", timeout=60_000)
        assert "Caller:" in page.inner_text("#live-calls")

        # 2. the call's page: what training will see, and a correction of how the first turn was read
        [call] = runtime.call_log.search()
        page.goto(f"{url}/calls/{call.id}")
        assert "learned" in page.inner_text("#training-verdict")
        first = next(t.index for t in runtime.call_log.transcript(call.id) if t.role == "caller")
        turn = page.locator(f"#turn-{first}")
        turn.locator("summary").click()
        turn.locator("input[value=ask]").check()
        turn.locator("textarea[name=questions]").fill("parking")
        turn.locator("text=Save correction").click()
        page.wait_for_selector(f"#turn-{first} .correction")
        page.reload()
        reading = page.inner_text(f"#turn-{first} .training-view")
        assert "reading example" in reading and '"questions":["parking"]' in reading.replace(" ", "")

        # 3. an admin starts the nightly run from the tuning page; it learns from the call and the correction
        admin = sign_in(browser, url, "alice")
        admin.goto(f"{url}/tuning")
        admin.click("text=Start a nightly run now")
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and "is running" in admin.content():
            time.sleep(2)
            admin.goto(f"{url}/tuning")
        run = admin.locator("tr.run").first
        assert "registered" in run.inner_text(), (run.inner_text(), (settings.nightly_dir / "dashboard-job.log"))
        assert "corrected_readings=1" in run.inner_text()
        version = run.locator("td").last.inner_text().strip()
        assert version

        # 4. ... and promotes that candidate; the running agent serves it
        admin.goto(f"{url}/models")
        row = admin.locator(f"#versions tr:has-text('{version}')")
        row.locator("input[name=reason]").fill("learned the parking question from review")
        row.locator("input[name=password]").fill(PASSWORD)
        row.locator("button:text('Promote')").click()  # (the gate's decision, "promote", is a cell of the row)
        admin.wait_for_selector(f"#serving:text('{version}')", timeout=120_000)
        assert version in runtime.slot.version
