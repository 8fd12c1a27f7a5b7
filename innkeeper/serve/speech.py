"""The speech engines a server needs, built from `Settings`: the bundled, verified Whisper, Piper and Silero.

The engines in `agent.speech` take paths and options; this is where the configuration and the provisioned
model files meet them.
"""

from __future__ import annotations

from agent.call.voice_config import SpeechModels, VoiceConfig
from agent.speech.asr import DecodeOptions, Recognizer, domain_hotwords, domain_prompt
from agent.speech.tts import Synthesizer
from agent.speech.vad import EndpointConfig, default_vad
from innkeeper.core.hotel import HotelProfile, load_hotel
from innkeeper.core.provision import bundled_piper_path, bundled_whisper_path
from innkeeper.core.settings import Settings


def options_from_settings(settings: Settings, hotel: HotelProfile) -> DecodeOptions:
    return DecodeOptions(
        beam_size=settings.asr_beam_size,
        initial_prompt=domain_prompt(hotel) if settings.asr_domain_prompt else None,
        hotwords=domain_hotwords(hotel) if settings.asr_hotwords else None,
        encoder_margin_s=settings.asr_encoder_margin_s,
    )


def load_recognizer(settings: Settings, hotel: HotelProfile | None = None) -> Recognizer:
    """The bundled, verified Whisper base with the configured levers (raises `ModelIntegrityError`)."""
    hotel = hotel or load_hotel(settings.hotel_file)
    return Recognizer(
        bundled_whisper_path(settings), options_from_settings(settings, hotel), threads=settings.asr_threads
    )


def load_synthesizer(settings: Settings, *, variation: bool = True) -> Synthesizer:
    """The bundled, verified voice (raises `ModelIntegrityError` when it is missing or corrupt)."""
    path = bundled_piper_path(settings)
    return Synthesizer(path, threads=settings.tts_threads, volume=settings.tts_volume, variation=variation)


def voice_config(settings: Settings) -> VoiceConfig:
    """The call settings from `Settings` (INNKEEPER_ENDPOINT_SILENCE_MS and friends)."""
    return VoiceConfig(
        endpoint=EndpointConfig(
            endpoint_silence_ms=settings.endpoint_silence_ms, early_silence_ms=settings.early_silence_ms
        ),
        barge_in_min_speech_ms=settings.barge_in_min_speech_ms,
        partial_every_ms=settings.partial_transcripts_ms,
        read_ahead=settings.read_ahead,
        end_on_finished_words=settings.end_on_finished_words,
    )


def load_speech_models(settings: Settings) -> SpeechModels:
    """The bundled, verified Whisper, Piper and Silero models (raises `ModelIntegrityError` when corrupt)."""
    return SpeechModels(
        recognizer=load_recognizer(settings),
        synthesizer=load_synthesizer(settings),
        vad=default_vad(),
        config=voice_config(settings),
    )
