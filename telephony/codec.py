"""Sample formats on the wire: G.711 mu-law (telephone audio) and PCM16 <-> float32 conversions.

The mu-law codec follows the ITU-T G.711 reference (the classic 16-bit formulation: bias 0x84,
clip at 32635, all bits inverted in the code byte). Both directions are table look-ups built once at
import, so encoding a 20 ms frame is one numpy indexing operation.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

MULAW_BIAS = 0x84  # added before the segment search so that each segment starts on a power of two
MULAW_CLIP = 32635  # largest magnitude that still fits after adding the bias (32635 + 132 = 32767)
MULAW_SILENCE = 0xFF  # the code of digital silence (positive zero)

PCM16_SCALE = 32768.0  # float32 full scale [-1, 1) <-> int16


def _encode_magnitudes(pcm: npt.NDArray[np.int32]) -> npt.NDArray[np.uint8]:
    """The G.711 encoder on int32 samples (int32 so that -(-32768) does not overflow)."""
    sign = np.where(pcm < 0, 0x80, 0x00)
    magnitude = np.minimum(np.abs(pcm), MULAW_CLIP) + MULAW_BIAS
    # The segment (exponent) is the position of the highest set bit above bit 7; frexp gives the bit
    # length exactly, where a floating log2 could round at powers of two.
    exponent = np.frexp(magnitude >> 7)[1].astype(np.int32) - 1
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8)


def _decode_codes(codes: npt.NDArray[np.int32]) -> npt.NDArray[np.int16]:
    """The G.711 decoder: each code maps to the middle of its quantisation interval."""
    inverted = ~codes & 0xFF
    exponent = (inverted >> 4) & 0x07
    mantissa = inverted & 0x0F
    magnitude = (((mantissa << 3) + MULAW_BIAS) << exponent) - MULAW_BIAS
    return np.where(inverted & 0x80, -magnitude, magnitude).astype(np.int16)


# Index the encoder by the int16 sample reinterpreted as uint16 (two's complement order).
_ENCODE_TABLE = _encode_magnitudes(np.arange(65536, dtype=np.uint16).view(np.int16).astype(np.int32))
_DECODE_TABLE = _decode_codes(np.arange(256, dtype=np.int32))


def _as_pcm16(pcm: npt.ArrayLike) -> npt.NDArray[np.int16]:
    """Integer samples as int16 (clipped); floats are refused because their scale is ambiguous."""
    array = np.asarray(pcm)
    if array.dtype == np.int16:
        return array
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"expected int16 PCM samples, got {array.dtype}; convert floats with float32_to_pcm16")
    return np.clip(array, -32768, 32767).astype(np.int16)


def mulaw_encode(pcm: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """PCM16 samples -> one mu-law code byte per sample (`.tobytes()` gives the wire payload)."""
    return _ENCODE_TABLE[_as_pcm16(pcm).view(np.uint16)]


def mulaw_decode(codes: bytes | bytearray | memoryview | npt.NDArray[np.uint8]) -> npt.NDArray[np.int16]:
    """Mu-law code bytes -> PCM16 samples."""
    if isinstance(codes, bytes | bytearray | memoryview):
        codes = np.frombuffer(codes, dtype=np.uint8)
    elif codes.dtype != np.uint8:
        raise TypeError(f"expected uint8 mu-law codes, got {codes.dtype}")
    return _DECODE_TABLE[codes]


def pcm16_to_float32(pcm: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """int16 samples -> float32 in [-1, 1)."""
    return (_as_pcm16(pcm).astype(np.float32) / np.float32(PCM16_SCALE)).astype(np.float32)


def float32_to_pcm16(audio: npt.ArrayLike) -> npt.NDArray[np.int16]:
    """float samples (full scale +-1) -> int16, rounded and clipped so loud TTS never wraps around."""
    scaled = np.rint(np.asarray(audio, dtype=np.float32) * np.float32(PCM16_SCALE))
    return np.clip(scaled, -32768, 32767).astype(np.int16)


def pcm16_from_bytes(data: bytes | bytearray | memoryview) -> npt.NDArray[np.int16]:
    """Little-endian PCM16 bytes -> int16 samples in native order (ValueError on an odd byte count)."""
    if len(data) % 2:
        raise ValueError(f"PCM16 data must have an even number of bytes, got {len(data)}")
    return np.frombuffer(data, dtype="<i2").astype(np.int16)


def pcm16_to_bytes(pcm: npt.ArrayLike) -> bytes:
    """int16 samples -> little-endian PCM16 bytes (the byte order of WAV and of both wire protocols)."""
    return _as_pcm16(pcm).astype("<i2").tobytes()
