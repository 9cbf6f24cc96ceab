"""The media path: RTP in and out of aiortc, and the audio on either side of it.

patches.py     aiortc/aioice patch points, version-checked (receive path, Opus send options and
               inline encoding, loopback host candidates, outgoing-RTP hook)
rtp_jitter.py  adaptive jitter buffer (pure): packets in, one 20 ms slot out per tick
opus.py        libopus through ctypes: decode, packet-loss concealment, in-band FEC; the
               agent's own encoder (aiortc's settings, inline, settled silence reused)
concealment.py G.711 expansion and pitch-period concealment (pure)
inbound.py     remote track → 16 kHz mono frames for the listener (and link statistics)
playout.py     the outbound queue on a virtual slot clock: fades, underrun concealment (pure)
outbound.py    OutboundAudioTrack: paced 20 ms slots, Opus-encoded inline (aiortc only packs)
"""
