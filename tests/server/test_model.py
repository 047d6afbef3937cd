"""Pure domain rules: aggregated statuses, frequencies, parameters."""

from __future__ import annotations

import base64

import pytest

from server import model
from server.rpc import ApiError


@pytest.mark.parametrize(
    ("statuses", "overall"),
    [
        ([], "Pending"),
        (["Success", "Success"], "Success"),
        (["Success", "Stopped"], "Success"),
        (["Success", "Pending"], "Pending"),
        (["Running", "Success"], "Running"),
        (["Scheduled", "Success"], "Scheduled"),
        (["Stopping", "Success"], "Stopping"),
        (["Failed", "Timeout", "Error"], "Failed"),
        (["Invalid", "Aborted"], "Failed"),
        (["Failed", "Stopped"], "Failed"),
        (["Success", "Failed"], "PartialFailed"),
        (["Success", "Timeout", "Stopped"], "PartialFailed"),
        (["Stopped", "Cancelled", "Terminated"], "Stopped"),
    ],
)
def test_overall_status(statuses: list[str], overall: str) -> None:
    assert model.overall_status(statuses) == overall


@pytest.mark.parametrize(
    ("status", "record"),
    [
        ("Pending", "Running"),
        ("Scheduled", "Running"),
        ("Running", "Running"),
        ("Success", "Finished"),
        ("Failed", "Failed"),
        ("Timeout", "Failed"),
        ("Invalid", "Failed"),
        ("Stopping", "Stopping"),
        ("Cancelled", "Stopped"),
        ("Terminated", "Stopped"),
    ],
)
def test_record_status(status: str, record: str) -> None:
    assert model.record_status(status) == record


def test_legacy_invoke_status() -> None:
    assert model.legacy_invoke_status("Success", timed=False) == "Finished"
    assert model.legacy_invoke_status("Success", timed=True) == "Running"
    assert model.legacy_invoke_status("PartialFailed", timed=False) == "PartialFailed"
    assert model.legacy_invoke_status("Timeout", timed=False) == "Failed"


@pytest.mark.parametrize(
    "frequency",
    [
        "0 */10 * * * *",
        "0 10 1 * * 6,0",
        "0 0 12 * * * Asia/Shanghai",
        "rate(60s)",
        "rate(1d)",
        "at(2026-12-01T03:00:00Z)",
        "at(2026-12-01 11:00:00 Asia/Shanghai)",
        "0 0 12 ? * WED 2099 GMT+8:00",
    ],
)
def test_valid_frequencies(frequency: str) -> None:
    assert model.validate_frequency(frequency) == frequency


@pytest.mark.parametrize(
    "frequency",
    [
        "",
        "*/5 * * * *",
        "61 * * * * *",
        "0 0 0 * * * Nowhere/City",
        "rate(0m)",
        "rate(30s)",
        "rate(8d)",
        "rate(3w)",
        "at(soon)",
        "at()",
        "0 0 0 32 * *",
    ],
)
def test_invalid_frequencies(frequency: str) -> None:
    with pytest.raises(ApiError) as err:
        model.validate_frequency(frequency)
    assert err.value.code == "InvalidParam.Frequency"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_substitute_leaves_builtins_to_the_agent() -> None:
    content = b64("echo {{a}} {{ACS::InvokeId}} {{b}}{{a}}")
    names = model.parameter_names(content)
    assert names == ["a", "b"]
    out = model.substitute(content, names, {"a": "1", "b": "2"})
    assert base64.b64decode(out).decode() == "echo 1 {{ACS::InvokeId}} 21"


def test_content_limits() -> None:
    assert model.decode_content("echo hi", "PlainText") == b64("echo hi")
    with pytest.raises(ApiError) as err:
        model.decode_content(b64("x" * 14000))
    assert err.value.code == "CmdContent.ExceedLimit"
    with pytest.raises(ApiError) as err:
        model.decode_content("%%%")
    assert err.value.code == "CmdContent.DecodeError"


def test_parse_parameters_accepts_python_repr_of_a_dict() -> None:
    assert model.parse_parameters("{'name': 'Jack', 'n': 3}") == {"name": "Jack", "n": "3"}
    for bad in ("[1]", "{'a': [1]}", "{'bad name': 'x'}", "__import__('os')"):
        with pytest.raises(ApiError):
            model.parse_parameters(bad)
