"""Pure rules of the Cloud Assistant domain: ids, times, command content, parameters, schedules."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
import secrets
import string
import time
import uuid
from collections.abc import Iterable

from common import schedule
from server.errors import ApiError, invalid
from server.inputs import load_json, load_literal, small_int

# The task lifecycle (statuses and their rules) lives in server/lifecycle.py; these names stay
# importable from here for the API modules.
from server.lifecycle import (  # noqa: F401
    ABORTED,
    CANCELLED,
    ERROR,
    FAILED,
    FAILED_LIKE,
    INVALID,
    PARTIAL_FAILED,
    PENDING,
    RUNNING,
    SCHEDULED,
    STOPPED,
    STOPPED_LIKE,
    STOPPING,
    SUCCESS,
    TERMINAL,
    TERMINATED,
    TIMEOUT,
    is_one_time_schedule,
    legacy_invoke_status,
    overall_status,
    record_status,
)

COMMAND_TYPES = ("RunShellScript", "RunBatScript", "RunPowerShellScript")
REPEAT_MODES = ("Once", "Period", "NextRebootOnly", "EveryReboot")
MAX_CONTENT_BYTES = 18 * 1024  # base64 CommandContent, as the real API
MAX_PARAMETERS = 20
MAX_PARAMETER_NAME = 64
DEFAULT_TIMEOUT = 60  # seconds
MAX_TIMEOUT = 86400

_ALPHABET = string.ascii_lowercase + string.digits
_PARAM = re.compile(r"\{\{\s*([A-Za-z0-9_\-:.]+)\s*\}\}")
_PARAM_NAME = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")


def new_id(prefix: str, length: int = 16) -> str:
    """A resource id in the real API's shape: c-…, t-…, mi-…."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def new_activation_id() -> str:
    """Activation ids are uppercase UUIDs, as the real API's."""
    return str(uuid.uuid4()).upper()


def new_activation_code() -> str:
    """A 32-character random activation code (shown once)."""
    return "a-" + secrets.token_urlsafe(22)[:30]


def now_ms() -> int:
    """Wall-clock milliseconds."""
    return int(time.time() * 1000)


def iso_from_ms(ms: int | None) -> str:
    """API time format for a millisecond timestamp ('' for none)."""
    if not ms:
        return ""
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


BAD_PARAMETERS = "InvalidParameter.Parameters"


def decode_content(content: str, encoding: str = "Base64") -> str:
    """Validate CommandContent and return it base64-encoded (PlainText is encoded here)."""
    if encoding == "PlainText":
        encoded = base64.b64encode(content.encode("utf-8")).decode("ascii")
    else:
        encoded = content.strip()
        try:
            base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ApiError(
                "CmdContent.DecodeError", "The specified command content is not valid Base64."
            ) from exc
    if len(encoded) > MAX_CONTENT_BYTES:
        raise ApiError(
            "CmdContent.ExceedLimit",
            f"The command content exceeds the size limit of {MAX_CONTENT_BYTES // 1024} KB after Base64 encoding.",
            403,
        )
    return encoded


def parameter_names(content_b64: str) -> list[str]:
    """Custom {{name}} parameters of a script (built-in ACS:: ones excluded), in order."""
    text = base64.b64decode(content_b64).decode("utf-8", "replace")
    names: list[str] = []
    for name in _PARAM.findall(text):
        if name.startswith("ACS::") or name in names:
            continue
        if not _PARAM_NAME.match(name):
            raise invalid(
                "CommandContent",
                f"Parameter name {name!r} is not valid.",
                "CmdParam.InvalidParamName",
            )
        names.append(name)
    if len(names) > MAX_PARAMETERS:
        raise ApiError(
            "CmdParamCount.ExceedLimit",
            f"A command may have at most {MAX_PARAMETERS} custom parameters.",
            403,
        )
    return names


def parse_parameters(text: str) -> dict[str, str]:
    """The Parameters JSON object: at most 20 string values with valid names."""
    if not text:
        return {}
    try:
        value = load_json(text)
    except ValueError:
        value = _python_literal(text)  # the SDK sends a dict as its Python repr
    if not isinstance(value, dict):
        raise invalid("Parameters", "It must be a JSON object.", BAD_PARAMETERS)
    if len(value) > MAX_PARAMETERS:
        raise ApiError(
            "ParameterCount.ExceedLimit",
            f"At most {MAX_PARAMETERS} custom parameters are allowed.",
            403,
        )
    result: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not _PARAM_NAME.match(key):
            raise invalid("Parameters", f"Parameter name {key!r} is not valid.", BAD_PARAMETERS)
        if isinstance(item, int) and not isinstance(item, bool) and not small_int(item):
            raise invalid("Parameters", f"The value of {key!r} is too large.", BAD_PARAMETERS)
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise invalid(
                "Parameters",
                f"The value of {key!r} must be a string.",
                "ParameterType.NotSupported",
                403,
            )
        result[key] = str(item)
    return result


def _python_literal(text: str) -> object:
    """Parse a Python literal (what str(dict) gives) or return None."""
    try:
        return load_literal(text)
    except ValueError:
        return None


def substitute(content_b64: str, names: Iterable[str], values: dict[str, str]) -> str:
    """Replace custom {{name}} parameters; every declared name needs a value."""
    names = list(names)
    lacking = [n for n in names if n not in values]
    if lacking:
        raise ApiError(
            "Parameter.MissingValue",
            f"No value was given for the custom parameter(s): {', '.join(lacking)}.",
        )
    text = base64.b64decode(content_b64).decode("utf-8", "replace")

    def repl(match: re.Match[str]) -> str:
        name = match.group(1)
        return values[name] if name in names else match.group(0)

    result = base64.b64encode(_PARAM.sub(repl, text).encode("utf-8")).decode("ascii")
    if len(result) > MAX_CONTENT_BYTES:
        raise ApiError(
            "CmdContent.ExceedLimit",
            "The command content exceeds the size limit after parameter substitution.",
            403,
        )
    return result


def validate_frequency(frequency: str) -> str:
    """Accept what an agent can schedule (docs/schedules.md); return it stripped."""
    text = frequency.strip()
    try:
        schedule.parse_frequency(text)
    except schedule.InvalidFrequencyError as exc:
        raise ApiError(
            "InvalidParam.Frequency", "The specified parameter Frequency is not valid."
        ) from exc
    return text
