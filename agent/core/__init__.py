"""Pure logic of the station: bytes and values in, decisions out.

Nothing in this package touches the network, files, threads, GPIO, audio or the real clock; the
adapters around it (``agent.*``, ``hal.*``) do, and a test fails if one of them sneaks in here.
"""
