"""Errors of the operator API, answered as {"RequestId","Code","Message"} (the ECS 2014-05-26 codes).

A leaf module: the domain rules (server/model.py) raise these without depending on the RPC edge
(server/rpc.py), which re-exports them.
"""

from __future__ import annotations

from collections.abc import Container, Sequence


class ApiError(Exception):
    """An error answered to the operator as {"RequestId","Code","Message"} with an HTTP 4xx."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


# An error code with its HTTP status, where the real API has its own for a parameter
# (the ECS 2014-05-26 API reference's per-action error tables)
Code = tuple[str, int]


def missing(name: str, code: str = "MissingParameter") -> ApiError:
    """The real API's answer to a mandatory parameter that was not supplied."""
    return ApiError(
        code,
        f'The input parameter "{name}" that is mandatory for processing this request is not supplied.',
    )


def invalid(
    name: str, detail: str = "", code: str = "InvalidParameter", status: int = 400
) -> ApiError:
    """The real API's answer to a parameter with a bad value."""
    message = f'The specified parameter "{name}" is not valid.'
    if detail:
        message += f" {detail}"
    return ApiError(code, message, status)


def require_found(ids: Sequence[str], found: Container[str], code: str, what: str) -> None:
    """`code` (404) naming the first ten of `ids` that are not in `found`, if any."""
    absent = [i for i in ids if i not in found]
    if absent:
        raise ApiError(code, f"The specified {what} does not exist: {', '.join(absent[:10])}.", 404)
