"""The technician's tool (``loa-provision``): identity, keys, trust and config of one station."""
