"""Audio transport for calls: codecs (G.711 mu-law), resampling and framing, Twilio Media Streams
and the plain websocket protocol (see the voice issue)."""
