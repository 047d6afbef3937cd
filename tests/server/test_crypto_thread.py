"""The agent API's crypto thread (server/agent_api/crypto.py): Ed25519 checks and signatures
off the event loop, each request getting its own verdict, failing closed. Real keys, a real
thread; the server-level checks (a bad signature answered 401) are in test_agent_api.py and
test_security.py."""

from __future__ import annotations

import asyncio
import threading

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common import protocol
from server.agent_api.crypto import CryptoThread

KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()


def test_a_burst_of_checks_gets_each_its_own_verdict_from_another_thread() -> None:
    messages = [f"request {i}".encode() for i in range(200)]
    # every third signed by the wrong key, every fifth cut short: each must be refused
    signatures = []
    for i, message in enumerate(messages):
        signature = (OTHER if i % 3 == 0 else KEY).sign(message)
        signatures.append(signature[:40] if i % 5 == 0 else signature)
    expected = [i % 3 != 0 and i % 5 != 0 for i in range(len(messages))]

    async def main() -> tuple[list[bool], set[str]]:
        crypto = CryptoThread()
        try:
            checks = [crypto.valid(KEY.public_key(), s, m) for s, m in zip(signatures, messages)]
            verdicts = await asyncio.gather(*checks)
            names = {await crypto.call(lambda: threading.current_thread().name) for _ in range(3)}
            return list(verdicts), names
        finally:
            crypto.close()

    verdicts, names = asyncio.run(main())
    assert verdicts == expected
    assert names == {"agent-crypto"}  # not the loop's thread


def test_a_check_that_raises_is_a_bad_signature_and_the_thread_goes_on() -> None:
    async def main() -> tuple[bool, bool]:
        crypto = CryptoThread()
        try:
            broken = await crypto.valid("not a key", b"x" * 64, b"m")  # type: ignore[arg-type]
            message = b"after the failure"
            good = await crypto.valid(KEY.public_key(), KEY.sign(message), message)
            return broken, good
        finally:
            crypto.close()

    assert asyncio.run(main()) == (False, True)


def test_signed_answers_verify_and_an_error_comes_back_to_the_caller() -> None:
    body = b'{"ok":true}'

    async def main() -> dict[str, str]:
        crypto = CryptoThread()
        try:
            with pytest.raises(ZeroDivisionError):
                await crypto.call(lambda: 1 // 0)
            return await crypto.sign_response(KEY, "i-1", "n-1", "/luban/api/x", 200, body)
        finally:
            crypto.close()

    headers = asyncio.run(main())
    trusted = {protocol.raw_public_b64(KEY): KEY.public_key()}
    protocol.check_response(trusted, "i-1", "n-1", "/luban/api/x", 200, body, headers)


def test_a_closed_thread_refuses_work() -> None:
    async def main() -> None:
        crypto = CryptoThread()
        assert await crypto.valid(KEY.public_key(), KEY.sign(b"m"), b"m")
        crypto.close()
        with pytest.raises(RuntimeError, match="closed"):
            await crypto.valid(KEY.public_key(), KEY.sign(b"m"), b"m")

    asyncio.run(main())


def test_a_thread_that_dies_fails_its_callers_instead_of_leaving_them_waiting() -> None:
    def dies() -> None:
        raise SystemExit(3)

    async def main() -> None:
        crypto = CryptoThread()
        try:
            with pytest.raises(RuntimeError, match="stopped"):
                await crypto.call(dies)
            await asyncio.sleep(0.1)  # the thread has ended
            with pytest.raises(RuntimeError, match="closed"):
                await crypto.valid(KEY.public_key(), KEY.sign(b"m"), b"m")
        finally:
            crypto.close()

    asyncio.run(asyncio.wait_for(main(), 10))
