"""The operator dashboard over HTTP against a live server on a real database (SQLite; PostgreSQL in CI):
sign-in, roles, CSRF and Origin checks on every state change, and the operator's work — a call's transcript,
a correction that becomes a training example, a call excluded from training, a booking cancelled — each in
the audit log with its author. The browser-driven journey is in test_dashboard_browser.py.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
from datetime import date, timedelta
from types import SimpleNamespace

import pytest
import requests

from agent.call.review import Corrections, review_queue
from innkeeper.core.accounts import AccountError, Accounts
from innkeeper.core.audit import AuditLog
from innkeeper.core.settings import Settings
from innkeeper.serve.app import create_app
from innkeeper.serve.runtime import AgentRuntime
from innkeeper.simulation.text_callers import say_lines
from tests.conftest import serving
from tuning.data.pii import NAME, PHONE
from tuning.data.preview import preview_call

PASSWORD = "correct horse battery"
TODAY = date(2026, 11, 26)
BOOKING_CALL = ["Hi, I'd like a room for two nights from December 7.", "Two adults.", "The deluxe king.",
                "Ana Diaz.", "207 555 0199", "Yes, book it.", "No, that's all, bye."]  # fmt: skip
# Every route that changes something, with a form that would be accepted (call id and code filled in).
STATE_CHANGES = [
    ("/calls/{call}/training", {"include": "no"}),
    ("/calls/{call}/turns/0/correction", {"intents": "book", "slot_nights": "2"}),
    ("/bookings/{code}/cancel", {"reason": "guest phoned the front desk"}),
    ("/models/v0001/promote", {"password": PASSWORD, "reason": "test"}),
    ("/models/rollback", {"password": PASSWORD, "reason": "test"}),
    (
        "/hotel",
        {
            "facts_topic": "spa",
            "facts_answer": "A spa.",
            "note": "x",
            "address": "1 Main St",
            "phone": "207 555 0100",
            "check_in_time": "3 PM",
            "check_out_time": "11 AM",
        },
    ),
    ("/tuning/start", {}),
    ("/tuning/stop", {}),
    ("/users", {"username": "mallory", "role": "admin", "new_password": "x" * 12, "password": PASSWORD}),
    ("/users/oscar/disable", {}),
    ("/logout", {}),
]
PAGES = [
    "/calls",
    "/calls/{call}",
    "/review",
    "/bookings",
    "/models",
    "/audit",
    "/hotel",
    "/live",
    "/phone",
    "/tuning",
    "/health",
]


class StubSpeech:
    """The dashboard takes no voice call here: speech models that are never idle-checked beyond `busy`."""

    recognizer = synthesizer = SimpleNamespace(busy=False)


@pytest.fixture
def dashboard(tmp_path, db):
    """A live server with an admin and an operator, and one text call that booked a room (never held out of a
    nightly run's training: the split hashes random call ids)."""
    settings = Settings(home=tmp_path, today=TODAY, database_url=db.engine.url.render_as_string(False),
                        llm_model="none", registry_poll_s=0, nightly_heldout_fraction=0.0)  # fmt: skip
    runtime = AgentRuntime(settings, llm=None, db=db)
    accounts = Accounts(db)
    accounts.add("alice", PASSWORD, "admin")
    accounts.add("oscar", PASSWORD, "operator")
    call_id = asyncio.run(_place_call(runtime, BOOKING_CALL))
    code = runtime.tools.list_bookings()[0].code
    app = create_app(settings, runtime=runtime, models=StubSpeech(), training_view=preview_call)
    with serving(app) as host:
        yield SimpleNamespace(url=f"http://{host}", db=db, runtime=runtime, call=call_id, code=code, host=host)


async def _place_call(runtime: AgentRuntime, lines: list[str]) -> str:
    return (await say_lines(runtime, lines)).call_id


def sign_in(server, username: str, password: str = PASSWORD) -> tuple[requests.Session, str]:
    """A signed-in browser-like session and its CSRF token (read from a page, as a browser would)."""
    session = requests.Session()
    answer = session.post(f"{server.url}/login", data={"username": username, "password": password, "next": "/calls"})
    assert answer.status_code == 200 and answer.url.endswith("/calls"), answer.text[:300]
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', answer.text).group(1)
    return session, csrf


def fill(path: str, server) -> str:
    return path.format(call=server.call, code=server.code)


def test_nothing_is_shown_or_changed_without_signing_in(dashboard):
    anonymous = requests.Session()
    for page in PAGES:
        answer = anonymous.get(dashboard.url + fill(page, dashboard), headers={"Accept": "text/html"})
        assert answer.url.startswith(f"{dashboard.url}/login"), page  # redirected to sign in
        assert "Ana" not in answer.text and "Diaz" not in answer.text
    for path, form in STATE_CHANGES:
        answer = anonymous.post(dashboard.url + fill(path, dashboard), data=form, allow_redirects=False)
        assert answer.status_code == 401, path
    api = anonymous.get(f"{dashboard.url}/api/calls/{dashboard.call}")
    assert api.status_code == 401 and "Diaz" not in api.text
    assert anonymous.get(f"{dashboard.url}/admin/models").status_code == 401
    assert anonymous.get(f"{dashboard.url}/calls/{dashboard.call}/audio/caller").status_code == 401
    # and nothing changed
    assert "spa" not in dashboard.runtime.hotel.facts
    assert dashboard.runtime.call_log.call_summary(dashboard.call).training == "included"
    assert dashboard.runtime.tools.list_bookings()[0].status == "confirmed"


def test_sign_in_cookie_is_httponly_and_strict_and_wrong_passwords_are_throttled(dashboard):
    answer = requests.post(
        f"{dashboard.url}/login", data={"username": "oscar", "password": PASSWORD}, allow_redirects=False
    )
    assert answer.status_code == 303
    cookie = answer.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "secure" not in cookie  # plain http here
    # a redirect after signing in stays on this server
    other = requests.post(
        f"{dashboard.url}/login",
        data={"username": "alice", "password": PASSWORD, "next": "//evil.example/x"},
        allow_redirects=False,
    )
    assert other.headers["location"] == "/calls"
    wrong = [
        requests.post(f"{dashboard.url}/login", data={"username": "oscar", "password": "guess"}).status_code
        for _ in range(6)
    ]
    assert wrong == [401] * 5 + [429]
    # the throttle holds even for the right password, and for other names from the same address
    assert requests.post(f"{dashboard.url}/login", data={"username": "oscar", "password": PASSWORD}).status_code == 429
    assert requests.post(f"{dashboard.url}/login", data={"username": "alice", "password": PASSWORD}).status_code == 429
    failed = AuditLog(dashboard.db).recent(action="sign_in.failed")
    assert len(failed) == 5 and {entry.actor for entry in failed} == {"oscar"}


def test_every_state_change_needs_the_csrf_token_and_this_servers_origin(dashboard):
    session, csrf = sign_in(dashboard, "alice")
    for path, form in STATE_CHANGES:
        url = dashboard.url + fill(path, dashboard)
        assert session.post(url, data=form, allow_redirects=False).status_code == 403, path
        wrong = session.post(url, data={**form, "csrf_token": "not-it"}, allow_redirects=False)
        assert wrong.status_code == 403, path
        elsewhere = session.post(
            url, data={**form, "csrf_token": csrf}, headers={"Origin": "https://evil.example"}, allow_redirects=False
        )
        assert elsewhere.status_code == 403 and "origin" in elsewhere.json()["error"], path
    assert dashboard.runtime.call_log.call_summary(dashboard.call).training == "included"
    assert dashboard.runtime.tools.list_bookings()[0].status == "confirmed"
    assert Corrections(dashboard.db).list() == [] and "spa" not in dashboard.runtime.hotel.facts
    # the header htmx sends is as good as the form field
    answer = session.post(
        f"{dashboard.url}/calls/{dashboard.call}/training", data={"include": "no"}, headers={"X-CSRF-Token": csrf}
    )
    assert answer.status_code == 200 and dashboard.runtime.call_log.call_summary(dashboard.call).training == "excluded"


def test_operators_may_not_change_models(dashboard):
    session, csrf = sign_in(dashboard, "oscar")
    for path in ("/models/v0001/promote", "/models/rollback"):
        answer = session.post(dashboard.url + path, data={"password": PASSWORD, "reason": "x", "csrf_token": csrf})
        assert answer.status_code == 403 and "admins only" in answer.json()["error"]
    assert session.get(f"{dashboard.url}/admin/models").status_code == 403
    page = session.get(f"{dashboard.url}/models")
    assert page.status_code == 200 and "Only admins promote" in page.text and "Promote</button>" not in page.text
    # an admin re-enters the password: a wrong one is refused (there is no registry here to promote from)
    admin, admin_csrf = sign_in(dashboard, "alice")
    refused = admin.post(
        f"{dashboard.url}/models/rollback", data={"password": "not mine", "reason": "x", "csrf_token": admin_csrf}
    )
    assert refused.status_code == 403 and refused.json()["error"] == "wrong password"
    assert AuditLog(dashboard.db).recent(action="reauthenticate.failed")[0].actor == "alice"


def test_an_operator_reviews_a_call_corrects_a_turn_excludes_the_call_and_cancels_its_booking(dashboard):
    session, csrf = sign_in(dashboard, "oscar")
    listing = session.get(f"{dashboard.url}/calls", params={"q": "deluxe"})
    assert dashboard.call[:8] in listing.text
    assert dashboard.call[:8] not in session.get(f"{dashboard.url}/calls", params={"q": "no such words"}).text
    page = session.get(f"{dashboard.url}/calls/{dashboard.call}")
    assert "I&#39;d like a room for two nights" in page.text and "Save correction" in page.text

    form = {"csrf_token": csrf, "intents": ["book"], "slot_check_in": "December 7", "slot_nights": "2",
            "questions": "is parking included?", "note": "two nights, not one"}  # fmt: skip
    answer = session.post(f"{dashboard.url}/calls/{dashboard.call}/turns/0/correction", data=form)
    assert answer.status_code == 200 and "Corrected by oscar" in answer.text
    [correction] = Corrections(dashboard.db).list(call_id=dashboard.call)
    assert correction.author == "oscar" and correction.turn_index == 0
    assert correction.action.slots.nights == 2 and correction.action.slots.check_in == "December 7"
    assert [i.value for i in correction.action.intents] == ["book"]
    assert correction.action.questions == ["is parking included?"]
    # an agent turn cannot be corrected; a reading that breaks the schema is refused
    agent_turn = session.post(f"{dashboard.url}/calls/{dashboard.call}/turns/1/correction", data=form)
    assert agent_turn.status_code == 404
    bad = session.post(f"{dashboard.url}/calls/{dashboard.call}/turns/2/correction", data={**form, "slot_adults": "99"})
    assert bad.status_code == 422 and len(Corrections(dashboard.db).list()) == 1

    session.post(f"{dashboard.url}/calls/{dashboard.call}/training", data={"include": "no", "csrf_token": csrf})
    assert dashboard.runtime.call_log.call_summary(dashboard.call).training == "excluded"

    no_reason = session.post(f"{dashboard.url}/bookings/{dashboard.code}/cancel", data={"csrf_token": csrf})
    assert no_reason.status_code == 422
    session.post(
        f"{dashboard.url}/bookings/{dashboard.code}/cancel", data={"reason": "duplicate booking", "csrf_token": csrf}
    )
    assert dashboard.runtime.tools.list_bookings()[0].status == "cancelled"
    again = session.post(
        f"{dashboard.url}/bookings/{dashboard.code}/cancel", data={"reason": "again", "csrf_token": csrf}
    )
    assert again.status_code == 409

    entries = AuditLog(dashboard.db).recent()
    done = {(e.action, e.actor, e.target) for e in entries}
    assert {
        ("review.correct", "oscar", f"{dashboard.call}#0"),
        ("call.training", "oscar", dashboard.call),
        ("booking.cancel", "oscar", dashboard.code),
    } <= done
    assert next(e for e in entries if e.action == "booking.cancel").detail["reason"] == "duplicate booking"
    audit_page = session.get(f"{dashboard.url}/audit")
    assert "booking.cancel" in audit_page.text and "duplicate booking" in audit_page.text


def test_a_calls_page_shows_what_the_nightly_run_would_learn_from_it(dashboard):
    session, csrf = sign_in(dashboard, "oscar")
    page = html.unescape(session.get(f"{dashboard.url}/calls/{dashboard.call}").text)
    verdict = re.search(r'id="training-verdict">(.*?)</p>', page, re.S).group(1)
    assert "learned" in verdict and "[NAME]" in verdict and "[PHONE]" in verdict
    seen = re.findall(r'<span class="redacted">(.*?)</span>', page)
    assert len(seen) == len(BOOKING_CALL) * 2  # every spoken turn, as training sees it
    assert "Ana Diaz." in page and not any("Diaz" in text or "555 0199" in text for text in seen)
    assert f"{NAME} {NAME}." in seen and PHONE in seen, seen
    # the booking the caller confirmed labels the turns that gave its details
    readings = [json.loads(r) for r in re.findall(r"reading example: <code>(.*?)</code>", page)]
    assert {"slots": {"adults": 2}} in readings and {"intents": ["confirm"]} in readings

    session.post(f"{dashboard.url}/calls/{dashboard.call}/training", data={"include": "no", "csrf_token": csrf})
    page = html.unescape(session.get(f"{dashboard.url}/calls/{dashboard.call}").text)
    assert "skipped: excluded" in page and '<span class="redacted">' not in page


def test_the_review_queue_lists_turns_the_agent_asked_again_until_they_are_corrected(dashboard):
    call_id = asyncio.run(_place_call(dashboard.runtime, ["I want to book a room.", "purple elephants", "bye"]))
    queue = review_queue(dashboard.db)
    mine = [item for item in queue if item.call_id == call_id]
    assert mine and all(item.reasons for item in mine)
    session, csrf = sign_in(dashboard, "oscar")
    page = session.get(f"{dashboard.url}/review")
    assert mine[0].caller_text in page.text
    session.post(
        f"{dashboard.url}/calls/{call_id}/turns/{mine[0].turn_index}/correction",
        data={"csrf_token": csrf, "intents": "other"},
    )
    assert (call_id, mine[0].turn_index) not in {(i.call_id, i.turn_index) for i in review_queue(dashboard.db)}


def test_an_admin_adds_and_disables_staff_in_the_page_and_operators_cannot(dashboard):
    operator, operator_csrf = sign_in(dashboard, "oscar")
    assert operator.get(f"{dashboard.url}/users").status_code == 403
    grab = {"username": "mallory", "role": "admin", "new_password": "x" * 12, "password": PASSWORD}
    assert operator.post(f"{dashboard.url}/users", data={**grab, "csrf_token": operator_csrf}).status_code == 403
    assert 'href="/users"' not in operator.get(f"{dashboard.url}/calls").text

    admin, csrf = sign_in(dashboard, "alice")
    page = admin.get(f"{dashboard.url}/users")
    assert page.status_code == 200 and "oscar" in page.text and 'href="/users"' in page.text
    new = {"username": "Nora", "role": "operator", "new_password": "a long passphrase", "csrf_token": csrf}
    assert admin.post(f"{dashboard.url}/users", data={**new, "password": "not mine"}).status_code == 403
    short = admin.post(f"{dashboard.url}/users", data={**new, "new_password": "short", "password": PASSWORD})
    assert short.status_code == 422 and "at least 10 characters" in short.text
    added = admin.post(f"{dashboard.url}/users", data={**new, "password": PASSWORD})
    assert added.status_code == 200 and "nora" in added.text
    taken = admin.post(f"{dashboard.url}/users", data={**new, "password": PASSWORD})
    assert taken.status_code == 422 and "exists" in taken.text
    nora, _ = sign_in(dashboard, "nora", "a long passphrase")  # the new operator signs in

    assert admin.post(f"{dashboard.url}/users/alice/disable", data={"csrf_token": csrf}).status_code == 409
    assert admin.post(f"{dashboard.url}/users/nobody/disable", data={"csrf_token": csrf}).status_code == 404
    assert admin.post(f"{dashboard.url}/users/nora/disable", data={"csrf_token": csrf}).status_code == 200
    assert nora.get(f"{dashboard.url}/calls", headers={"Accept": "text/html"}).url.startswith(f"{dashboard.url}/login")
    done = {(e.action, e.actor, e.target) for e in AuditLog(dashboard.db).recent()}
    assert {("user.add", "alice", "nora"), ("user.disable", "alice", "nora")} <= done
    assert [a.username for a in Accounts(dashboard.db).list() if a.is_admin] == ["alice"]


def test_calls_are_found_by_whether_they_made_a_booking(dashboard):
    no_booking = asyncio.run(_place_call(dashboard.runtime, ["Do you have parking?", "Thanks, bye."]))
    session, _ = sign_in(dashboard, "oscar")
    everything = session.get(f"{dashboard.url}/calls").text
    assert dashboard.call[:8] in everything and no_booking[:8] in everything
    assert f'href="/bookings?q={dashboard.code}"' in everything  # the booking call shows its code
    booked = session.get(f"{dashboard.url}/calls", params={"booked": "true"}).text
    assert dashboard.call[:8] in booked and no_booking[:8] not in booked
    assert [c.id for c in dashboard.runtime.call_log.search(booked=True)] == [dashboard.call]
    assert dashboard.runtime.call_log.search(booked=True, text="parking") == []


def test_a_disabled_user_is_signed_out_at_once(dashboard):
    session, _ = sign_in(dashboard, "oscar")
    Accounts(dashboard.db).disable("oscar")
    answer = session.get(f"{dashboard.url}/calls", headers={"Accept": "text/html"})
    assert answer.url.startswith(f"{dashboard.url}/login")
    assert requests.post(f"{dashboard.url}/login", data={"username": "oscar", "password": PASSWORD}).status_code == 401


def test_call_audio_is_served_only_from_the_recordings_folder(dashboard, tmp_path):
    outside = tmp_path.parent / "secret.wav"
    outside.write_bytes(b"RIFF")
    dashboard.runtime.call_log.set_audio(dashboard.call, caller_audio=str(outside), agent_audio="/etc/passwd")
    session, _ = sign_in(dashboard, "oscar")
    for leg in ("caller", "agent", "../../etc"):
        assert session.get(f"{dashboard.url}/calls/{dashboard.call}/audio/{leg}").status_code == 404
    inside = dashboard.runtime.settings.calls_dir / "a.wav"
    inside.parent.mkdir(parents=True, exist_ok=True)
    inside.write_bytes(b"RIFF....WAVE")
    dashboard.runtime.call_log.set_audio(dashboard.call, caller_audio=str(inside), agent_audio=None)
    answer = session.get(f"{dashboard.url}/calls/{dashboard.call}/audio/caller")
    assert answer.status_code == 200 and answer.content == b"RIFF....WAVE"


def test_metrics_are_exported_for_prometheus(dashboard):
    text = requests.get(f"{dashboard.url}/metrics").text
    assert "innkeeper_calls_active 0.0" in text and 'innkeeper_model_info{version="template"} 1.0' in text
    assert "innkeeper_voice_to_voice_seconds_bucket" in text


def test_accounts_refuse_bad_names_roles_and_short_passwords(sqlite_db):
    accounts = Accounts(sqlite_db)
    for username, password, role in [
        ("Bad Name", PASSWORD, "operator"),
        ("ok", PASSWORD, "superuser"),
        ("ok", "short", "operator"),
    ]:
        with pytest.raises(AccountError):
            accounts.add(username, password, role)
    accounts.add("Olga", PASSWORD, "operator")
    with pytest.raises(AccountError, match="exists"):
        accounts.add("olga", PASSWORD, "admin")
    assert accounts.verify("OLGA", PASSWORD).username == "olga"
    assert accounts.verify("olga", PASSWORD + "x") is None and accounts.verify("nobody", PASSWORD) is None
    with pytest.raises(AccountError, match="no user"):
        accounts.disable("nobody")


def test_sessions_end_when_they_expire_or_are_closed(sqlite_db):
    account = Accounts(sqlite_db).add("olga", PASSWORD, "operator")
    expired = Accounts(sqlite_db, session_lifetime=timedelta(seconds=-1))
    token, _ = expired.open_session(account)
    assert expired.session(token) is None
    live = Accounts(sqlite_db)
    token, signed_in = live.open_session(account)
    assert live.session(token) == signed_in and live.session(token + "x") is None
    live.close_session(token)
    assert live.session(token) is None


def test_the_users_cli_adds_lists_and_disables_staff(db, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from innkeeper.cli import app
    from innkeeper.cli import common as cli_common
    from innkeeper.core.settings import get_settings

    monkeypatch.setenv("INNKEEPER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("INNKEEPER_DATABASE_URL", db.engine.url.render_as_string(False))
    monkeypatch.setattr(cli_common.console, "width", 200)
    get_settings.cache_clear()
    cli = CliRunner()
    try:
        added = cli.invoke(app, ["users", "add", "Dana", "--role", "admin", "--password-stdin"], input=PASSWORD + "\n")
        assert added.exit_code == 0, added.output
        assert Accounts(db).verify("dana", PASSWORD).role == "admin"
        short = cli.invoke(app, ["users", "add", "eve", "--password-stdin"], input="short\n")
        assert short.exit_code == 1 and "at least 10 characters" in short.output
        assert (
            cli.invoke(app, ["users", "add", "eve", "--role", "root", "--password-stdin"], input=PASSWORD).exit_code
            == 1
        )
        listing = cli.invoke(app, ["users", "list"])
        assert "dana" in listing.output and "admin" in listing.output and "eve" not in listing.output
        assert cli.invoke(app, ["users", "disable", "dana"]).exit_code == 0
        assert Accounts(db).verify("dana", PASSWORD) is None
        assert "disabled" in cli.invoke(app, ["users", "list"]).output
        assert cli.invoke(app, ["users", "disable", "nobody"]).exit_code == 1
        assert [e.action for e in AuditLog(db).recent()] == ["user.disable", "user.add"]
    finally:
        get_settings.cache_clear()


def test_a_page_on_another_site_cannot_place_a_call_through_a_visitors_browser(dashboard):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    with pytest.raises(InvalidStatus) as refused:
        connect(f"ws://{dashboard.host}/ws/call", origin="https://evil.example", open_timeout=10)
    assert refused.value.response.status_code == 403
    # this server's own pages may (the browser call page), and so may clients that send no Origin
    for origin in (f"http://{dashboard.host}", None):
        with connect(f"ws://{dashboard.host}/ws/call", origin=origin, open_timeout=10) as ws:
            ws.send('{"type": "stop"}')


def test_staff_edit_the_hotels_facts_and_the_next_turn_answers_from_them(dashboard):
    runtime = dashboard.runtime
    session, csrf = sign_in(dashboard, "oscar")
    page = session.get(f"{dashboard.url}/hotel")
    form = {field: re.search(rf'name="{field}" value="([^"]*)"', page.text).group(1)
            for field in ("address", "phone", "check_in_time", "check_out_time")}  # fmt: skip
    facts = dict(runtime.hotel.facts)
    new_parking = "Parking is free for hotel guests."
    form |= {
        "csrf_token": csrf,
        "facts_topic": [*facts, "spa"],
        "facts_answer": [new_parking if topic == "parking" else answer for topic, answer in facts.items()]
        + ["The spa is open from 9 AM to 8 PM."],
        "policies_topic": list(runtime.hotel.policies),
        "policies_answer": list(runtime.hotel.policies.values()),
        "note": "parking is free from today; new spa",
    }

    async def call_in_progress():  # the edit lands between two turns of one call
        convo = runtime.new_conversation()
        await convo.start()
        before = await convo.reply("Is there parking?")
        saved = session.post(f"{dashboard.url}/hotel", data=form)  # saved while the call goes on
        after = await convo.reply("And is parking included?")
        spa = await convo.reply("Do you have a spa?")
        await convo.close()
        return before, saved, after, spa

    before, saved, after, spa = asyncio.run(call_in_progress())
    assert facts["parking"] in before and saved.status_code == 200
    assert new_parking in after and "spa is open from 9 AM" in spa
    assert runtime.hotel.facts["parking"] == new_parking
    [entry] = AuditLog(dashboard.db).recent(action="hotel.edit")
    assert entry.actor == "oscar" and entry.detail["note"] == "parking is free from today; new spa"
    # a broken edit is refused with the reason and changes nothing
    bad = session.post(f"{dashboard.url}/hotel", data={**form, "check_in_time": "whenever", "note": "oops"})
    assert bad.status_code == 422 and "check_in_time" in bad.text
    assert runtime.hotel.check_in_time != "whenever" and runtime.hotel_facts.version.version == 1
    # a new server process reads the newest version back
    assert AgentRuntime(runtime.settings, llm=None, db=dashboard.db).hotel.facts["parking"] == new_parking


def test_hotel_edits_are_validated_versioned_and_limited_to_what_callers_ask(sqlite_db, hotel):
    from innkeeper.core.hotel_edits import HotelEditError, HotelFacts

    store = HotelFacts(sqlite_db, hotel)
    assert store.version.version == 0 and store.current() is hotel
    for bad in (
        {"facts": {"Spa Hours!": "9 to 5"}},
        {"facts": {"spa": "  "}},
        {"check_out_time": "later"},
        {"address": ""},
        {"room_types": []},
    ):
        with pytest.raises(HotelEditError):
            store.save(bad, author="oscar")
    first = store.save({"facts": {**hotel.facts, "spa": "Open 9 AM to 8 PM."}}, author="oscar", note="spa")
    second = store.save({"check_in_time": "2 PM"}, author="alice")
    assert (first.version, second.version) == (1, 2)
    assert store.current().check_in_time == "2 PM" and store.current().facts["spa"] == "Open 9 AM to 8 PM."
    assert [v.author for v in store.history()] == ["alice", "oscar"]
    assert store.history()[1].profile.check_in_time == hotel.check_in_time  # each version stands alone
    assert HotelFacts(sqlite_db, hotel).load().version == 2


def test_the_tuning_page_shows_runs_with_progress_gate_reasons_and_measures_across_versions(dashboard):
    import json
    import time

    nightly = dashboard.runtime.settings.nightly_dir
    running, rejected = nightly / "run-20261207T010000", nightly / "run-20261206T010000"
    for folder in (running, rejected):
        folder.mkdir(parents=True)
    (running / "state.json").write_text(json.dumps({"done": {"curate": {}}}))
    (running / "progress.json").write_text(json.dumps({"step": 12, "of": 40, "loss": 1.234, "at": time.time()}))
    (rejected / "state.json").write_text(json.dumps({"done": {s: {} for s in ("curate", "train", "evaluate")}}))
    gate = {"decision": "reject", "reasons": ["chat_kl 0.09 > 0.05"], "checks": {}}
    report = {"run_id": rejected.name, "status": "rejected", "counts": {"eligible": 7, "kept": 5}, "gate": gate}
    (rejected / "report.json").write_text(json.dumps(report))

    session, _ = sign_in(dashboard, "oscar")
    page = session.get(f"{dashboard.url}/tuning").text
    first, second = page.index(running.name), page.index(rejected.name)
    assert first < second  # newest first
    assert "step 12 / 40" in page and 'value="30"' in page and "running" in page[first:second]
    assert "rejected" in page[second:] and "chat_kl 0.09 &gt; 0.05" in page and "eligible=7" in page
    # no versions registered here: the charts say so instead of drawing nothing
    assert page.count("no data yet") == 6


def test_version_charts_draw_one_point_per_version_and_leave_gaps_for_missing_measures():
    from innkeeper.serve.web.operations import _version_charts

    versions = [
        {"id": "v0001-a", "metrics": {"domain_nll": 2.0, "serving_domain_nll": 2.1, "chat_kl": 0.01}},
        {"id": "v0002-b", "metrics": {"domain_nll": 1.8, "serving_domain_nll": 2.0}},
        {"id": "v0003-c", "metrics": {"domain_nll": 1.7, "serving_domain_nll": 1.8, "chat_kl": 0.03}},
    ]
    domain, kl, *_ = (str(chart) for chart in _version_charts(versions))
    assert domain.count("<circle") == 6 and domain.count("<polyline") == 2 and "v0002" in domain
    assert kl.count("<circle") == 2 and "<polyline" not in kl  # a gap: no line through the missing version


def test_the_health_page_shows_latency_percentiles_per_hour(dashboard):
    from datetime import UTC, datetime

    call_log = dashboard.runtime.call_log
    call_id = call_log.start_call(channel="web", caller_number=None, model_version="template")
    now = datetime.now(UTC)
    for v2v_ms in (500, 600, 700, 800, 2000):  # nearest rank: p50 = 700, p95 = 2000
        call_log.log_turn(call_id, role="agent", text="ok", started_at=now, ended_at=now,
                          latencies={"v2v_server_ms": v2v_ms})  # fmt: skip
    [hour] = call_log.latency_by_hour(now - timedelta(hours=1))
    assert (hour.turns, hour.p50_ms, hour.p95_ms) == (5, 700, 2000)
    session, _ = sign_in(dashboard, "oscar")
    page = session.get(f"{dashboard.url}/health").text
    assert "<td>5</td><td>700</td><td>2000</td>" in page and "Voice-to-voice at the server" in page


def test_a_real_time_factor_is_compute_per_audio_second():
    from agent.speech.speed import RealTimeFactor

    speed = RealTimeFactor()
    assert speed.value is None
    speed.add(audio_s=4.0, compute_s=1.0)
    speed.add(audio_s=6.0, compute_s=1.5)
    assert speed.value == pytest.approx(0.25) and speed.runs == 2
    with speed.timing() as handled:
        handled.append(10.0)
    assert speed.audio_s == 20.0 and speed.runs == 3


def test_an_admin_starts_a_nightly_run_from_the_dashboard_as_its_own_process_and_can_stop_it(dashboard):
    import time

    operator, operator_csrf = sign_in(dashboard, "oscar")
    assert operator.post(f"{dashboard.url}/tuning/start", data={"csrf_token": operator_csrf}).status_code == 403
    session, csrf = sign_in(dashboard, "alice")
    page = session.post(f"{dashboard.url}/tuning/start", data={"csrf_token": csrf})
    assert page.status_code == 200 and "A run started here by alice is running" in page.text
    again = session.post(f"{dashboard.url}/tuning/start", data={"csrf_token": csrf})
    assert again.status_code == 409 and "still running" in again.json()["detail"]
    # stopped at once (the child is still starting): nothing keeps running
    stopped = session.post(f"{dashboard.url}/tuning/stop", data={"csrf_token": csrf})
    assert stopped.status_code == 200 and "is running" not in stopped.text
    assert session.post(f"{dashboard.url}/tuning/stop", data={"csrf_token": csrf}).status_code == 409
    # run to its end: the child reads this server's settings (same database and home, no language model here),
    # curates the booking call, and fails at training; the page shows the run and why
    session.post(f"{dashboard.url}/tuning/start", data={"csrf_token": csrf})
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and "is running" in (page := session.get(f"{dashboard.url}/tuning").text):
        time.sleep(1)
    [run] = [p.parent.name for p in dashboard.runtime.settings.nightly_dir.glob("run-*/state.json")]
    row = page[page.index(f'id="run-{run}"') :]
    assert "failed" in row[:400] and "curate" in row[:600] and "language model &#39;none&#39;" in row
    actions = [(e.action, e.actor) for e in AuditLog(dashboard.db).recent()]
    assert actions.count(("tuning.start", "alice")) == 2 and ("tuning.stop", "alice") in actions
