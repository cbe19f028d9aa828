"""The province tools' error for refusals a person must act on; the CLI prints it and exits 1."""


class ProvinceError(RuntimeError):
    """Refused: the message says what is wrong and, where it can, what to do."""
