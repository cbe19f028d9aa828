"""Generated test corpora: hostile envelopes for the station's trust core (``hostile``)."""
