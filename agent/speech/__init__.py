"""Speech engines, each taking model paths and options: Silero VAD endpointing, faster-whisper ASR, Piper TTS."""
