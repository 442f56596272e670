"""What the serving tests share: the token, the signature models and the bounds the app runs under."""

from __future__ import annotations

import socket

TOKEN = "test-token-9f2c"
SIGS = ["SIG_IMMUNE_CYTOLYTIC", "SIG_PROLIFERATION", "SIG_SQUAMOUS_DIFFERENTIATION", "SIG_ADENO_DIFFERENTIATION"]
MODELS = [f"sig__{s}" for s in SIGS]
MAX_REQUEST_BYTES = 128 * 1024  # small, so the fuzzing reaches the 413 with cheap bodies
MAX_INSTANCES = 500


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
