"""State-service credentials through libmunge (ctypes) against a real munged with its own key:
what a credential carries, and everything munged refuses."""

from __future__ import annotations

import os
import threading

import pytest

from shoal.state import auth
from tests.conftest import private_munged


def test_a_credential_carries_its_payload_and_maker(munged: str) -> None:
    payload = auth.request_payload("POST", "/dsc/events", b'{"events": []}')
    cred = auth.encode(payload, munged)
    assert cred.startswith("MUNGE:") and cred.isascii() and not any(c.isspace() for c in cred)
    who, got = auth.decode(cred, munged)
    assert got == payload
    assert (who.uid, who.gid, who.via) == (os.getuid(), os.getgid(), "munge")


def test_munged_refuses_a_replay_a_changed_credential_and_another_key(munged: str) -> None:
    cred = auth.encode("once", munged)
    auth.decode(cred, munged)
    with pytest.raises(auth.AuthError, match="Replayed credential"):
        auth.decode(cred, munged)
    fresh = auth.encode("changed", munged)
    mid = len(fresh) // 2
    flipped = fresh[:mid] + ("A" if fresh[mid] != "A" else "B") + fresh[mid + 1:]
    with pytest.raises(auth.AuthError, match="refused"):
        auth.decode(flipped, munged)
    with private_munged() as other:
        foreign = auth.encode("another cluster", other)
    with pytest.raises(auth.AuthError, match="refused"):
        auth.decode(foreign, munged)


@pytest.mark.parametrize("bad", ["", "MUNGE", "munge:abc", "MUNGE:a b", "MUNGE:a\0b", "MUNGE:é",
                                 "MUNGE:" + "A" * 9000])
def test_malformed_credentials_never_reach_munged(bad: str) -> None:
    # No munged is running here: anything that reached libmunge would fail differently.
    with pytest.raises(auth.AuthError, match="malformed"):
        auth.decode(bad, "/nonexistent/munge.sock")


def test_no_munged_is_a_clear_error() -> None:
    with pytest.raises(auth.AuthError) as info:
        auth.encode("x", "/nonexistent/munge.sock")
    assert "munge" in str(info.value) and info.value.hint and "munged" in info.value.hint


def test_concurrent_decodes_each_get_their_own_answer(munged: str) -> None:
    """The API decodes in worker threads: one context per call keeps their errors apart."""
    creds = [auth.encode(f"p{i}", munged) for i in range(40)]
    replays = creds[:10]
    for c in replays:
        auth.decode(c, munged)
    results: dict[int, str] = {}

    def one(i: int) -> None:
        try:
            results[i] = auth.decode(creds[i], munged)[1]
        except auth.AuthError as exc:
            results[i] = f"error: {exc}"

    threads = [threading.Thread(target=one, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all("eplayed" in results[i] for i in range(10))
    assert [results[i] for i in range(10, 40)] == [f"p{i}" for i in range(10, 40)]
