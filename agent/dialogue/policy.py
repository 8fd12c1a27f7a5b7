"""Caller-input safety: sanitising raw text and spotting requests the agent must not serve.

Decisions here are made by code, before any model sees the turn: a harmful or off-topic
request is declined, a request for a person is handed off, and text that is not a usable
English utterance gets a clear reply instead of reaching the dialogue state.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from enum import Enum

MAX_UTTERANCE_CHARS = 600  # a spoken turn is far shorter; longer input is pasted junk or an attack


class InputProblem(Enum):
    EMPTY = "empty"
    TOO_LONG = "too_long"
    NOT_TEXT = "not_text"
    NOT_ENGLISH = "not_english"


@dataclass(frozen=True)
class CleanInput:
    text: str
    problem: InputProblem | None = None


def clean_utterance(raw: str | bytes) -> CleanInput:
    """Normalise a caller turn; report why it cannot be understood instead of raising."""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    text = unicodedata.normalize("NFKC", raw)
    printable = "".join(ch for ch in text if ch.isprintable() or ch in " \t")
    junk_ratio = 1 - len(printable.strip()) / max(len(text.strip()), 1)
    text = " ".join(printable.split())
    if not text:
        return CleanInput("", InputProblem.NOT_TEXT if raw.strip() else InputProblem.EMPTY)
    if junk_ratio > 0.3 or _replacement_ratio(text) > 0.2 or not re.search(r"[A-Za-z0-9]", text):
        return CleanInput(text[:MAX_UTTERANCE_CHARS], _non_latin_or_junk(text))
    if len(text) > MAX_UTTERANCE_CHARS:
        return CleanInput(text[:MAX_UTTERANCE_CHARS], InputProblem.TOO_LONG)
    if _looks_foreign(text):
        return CleanInput(text, InputProblem.NOT_ENGLISH)
    return CleanInput(text)


def _replacement_ratio(text: str) -> float:
    return text.count("\ufffd") / len(text)


def _non_latin_or_junk(text: str) -> InputProblem:
    letters = [ch for ch in text if ch.isalpha()]
    return InputProblem.NOT_ENGLISH if len(letters) >= 3 else InputProblem.NOT_TEXT


# Function words that are frequent in each language and rare in English hotel talk.
_FOREIGN_MARKERS = {
    "es": {"hola", "quiero", "una", "habitación", "habitacion", "para", "noches", "por", "favor", "gracias"},
    "fr": {"bonjour", "je", "voudrais", "une", "chambre", "pour", "nuits", "merci", "avec", "réserver", "s'il"},
    "de": {"hallo", "ich", "möchte", "ein", "zimmer", "für", "nächte", "danke", "bitte", "buchen", "und"},
    "it": {"buongiorno", "vorrei", "una", "camera", "per", "notti", "grazie", "prenotare"},
    "pt": {"olá", "quero", "um", "quarto", "para", "noites", "obrigado", "reservar"},
}
_ENGLISH_MARKERS = {
    "i",
    "a",
    "the",
    "to",
    "for",
    "and",
    "is",
    "my",
    "me",
    "you",
    "room",
    "book",
    "what",
    "can",
    "do",
    "need",
    "want",
    "would",
    "like",
    "please",
    "yes",
    "no",
    "hi",
    "hello",
    "it",
    "of",
    "on",
    "in",
    "at",
}


def _looks_foreign(text: str) -> bool:
    words = re.findall(r"[^\W\d_]+(?:'[^\W\d_]+)?", text.lower())
    if len(words) < 2:
        return False
    english = sum(w in _ENGLISH_MARKERS for w in words)
    foreign = max(sum(w in markers for w in words) for markers in _FOREIGN_MARKERS.values())
    return foreign >= 2 and foreign > english


_HARMFUL = re.compile(
    r"\b(bombs?|explosives?|detonat\w*|weapons?|guns?|poison\w*|kill(?:ing)?|murder|hurt (?:someone|him|her|them)"
    r"|meth|cocaine|heroin|drugs?|hack\w*|steal\w*|break into|pick (?:a|the) lock|someone'?s (?:account|password)"
    r"|password of|malware|ransomware|phishing|launder\w*|stalk\w*|spy on|track (?:my|his|her) (?:wife|husband|ex)"
    r"|make a fake|forge\w*|counterfeit|suicide|self[- ]harm)\b",
    re.IGNORECASE,
)

_TRANSFER = re.compile(
    r"\b(?:(?:real|live|actual) (?:person|human|agent)|human|operator|representative|manager|front desk"
    r"|speak (?:to|with) (?:an? |the )?(?:agent|person|someone|somebody)|talk (?:to|with) (?:an? |the )?"
    r"(?:agent|person|someone|somebody)|transfer me|connect me|an agent)\b",
    re.IGNORECASE,
)

# Topics a hotel phone line serves; anything with none of these and a clear off-topic cue is declined.
_HOTEL_WORDS = re.compile(
    r"\b(room|rooms|book\w*|reserv\w*|stay\w*|night|nights|check(?:ing)?[- ]?(?:in|out)|hotel|suite|deluxe"
    r"|standard|rate|price|cost|available|availability|cancel\w*|change|modify|breakfast|parking|park|airport"
    r"|shuttle|wifi|wi-fi|pool|gym|restaurant|dinner|pets?|dogs?|smok\w*|children|kids|address|where are you"
    r"|located|directions|payment|pay|card|confirmation|code|guests?|people|adults?|bed|beds|view|balcony"
    r"|tonight|tomorrow|weekend|arriv\w*|leav\w*|depart\w*)\b",
    re.IGNORECASE,
)
_OFF_TOPIC = re.compile(
    r"\b(write (?:me )?(?:a|an) (?:poem|essay|story|song|code|program)|tell me a joke|weather|stock|bitcoin"
    r"|crypto|president|election|politic\w*|capital of|recipe|homework|translate|meaning of life|football"
    r"|baseball|movie|celebrity|who won|solve|equation|math problem|python|javascript)\b",
    re.IGNORECASE,
)


def is_harmful(text: str) -> bool:
    return bool(_HARMFUL.search(text))


def wants_human(text: str) -> bool:
    return bool(_TRANSFER.search(text))


def is_off_topic(text: str) -> bool:
    return bool(_OFF_TOPIC.search(text)) and not _HOTEL_WORDS.search(text)


def mentions_hotel_topic(text: str) -> bool:
    return bool(_HOTEL_WORDS.search(text))
