"""placeholder until the viewer lands."""


def setup(sub) -> None:
    pass
