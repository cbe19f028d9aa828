"""Hardware and operating-system ports and their implementations (relays, audio, clock, probes).

Hardware libraries are imported lazily inside the implementations, so the unit suite runs where
PortAudio and GPIO are absent.
"""
