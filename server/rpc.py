"""The ECS RPC edge: parameter parsing, signature v1 (HMAC-SHA1), and API errors.

Pure functions over request parameters; no I/O. The signature scheme is Alibaba Cloud's RPC
signature version 1.0: sort the parameters, percent-encode (RFC 3986) key=value pairs, join with
"&", then sign ``METHOD&%2F&<percent-encoded query>`` with HMAC-SHA1 keyed by ``secret + "&"``.
"""

from __future__ import annotations

import base64
import builtins
import dataclasses
import datetime as dt
import hashlib
import hmac
import re
import urllib.parse
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from server.errors import ApiError, Code, invalid, missing  # noqa: F401 (re-exported)
from server.inputs import ascii_int, load_json

API_VERSION = "2014-05-26"
TIMESTAMP_WINDOW = 15 * 60  # seconds a signed request stays valid, as the real API
DEFAULT_REGION = "cn-hangzhou"  # the region of a request without RegionId
_REGION = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
MAX_PAGE_SIZE = 50
MAX_LIST_ITEMS = 100  # InstanceId.N and friends
BAD_NEXT_TOKEN = ("InvalidParameter.NextToken", 400)
# What XML 1.0 cannot carry, even escaped: C0 controls but tab/LF/CR, surrogates, U+FFFE/FFFF.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_LIST_KEY = re.compile(r"^([A-Za-z]+)\.([0-9]{1,4})$")


def new_request_id() -> str:
    """A RequestId in the real API's shape (uppercase UUID)."""
    return str(uuid.uuid4()).upper()


def percent_encode(value: str) -> str:
    """RFC 3986 percent-encoding as the signature needs it (space -> %20, ~ kept)."""
    return urllib.parse.quote(value, safe="~")


def string_to_sign(method: str, params: Mapping[str, str]) -> str:
    """The canonical string signature v1 signs."""
    pairs = sorted((k, v) for k, v in params.items() if k != "Signature")
    query = "&".join(f"{percent_encode(k)}={percent_encode(v)}" for k, v in pairs)
    # percent_encode(query), without its byte-by-byte pass (242 µs for an InvokeCommand to 100
    # instances): the encoded pairs hold only unreserved characters and %XX, joined by = and &
    encoded = query.replace("%", "%25").replace("=", "%3D").replace("&", "%26")
    return f"{method.upper()}&{percent_encode('/')}&{encoded}"


def compute_signature(method: str, params: Mapping[str, str], secret: str) -> str:
    """Base64 HMAC-SHA1 of the canonical string, keyed by ``secret + "&"``."""
    digest = hmac.new(
        (secret + "&").encode("utf-8"),
        string_to_sign(method, params).encode("utf-8"),
        hashlib.sha1,
    ).digest()
    return base64.b64encode(digest).decode("ascii")


def utc_timestamp(when: dt.datetime | None = None) -> str:
    """ISO 8601 UTC timestamp as the API uses it: 2026-11-26T06:28:33Z."""
    when = when or dt.datetime.now(dt.timezone.utc)
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def sign_params(
    params: Mapping[str, Any], access_key_id: str, secret: str, method: str = "POST"
) -> dict[str, str]:
    """Return `params` plus the common signature parameters and Signature (client side)."""
    signed = {k: str(v) for k, v in params.items()}
    signed.setdefault("Version", API_VERSION)
    signed.setdefault("Format", "JSON")
    signed.update(
        {
            "AccessKeyId": access_key_id,
            "SignatureMethod": "HMAC-SHA1",
            "SignatureVersion": "1.0",
            "SignatureNonce": uuid.uuid4().hex,
            "Timestamp": utc_timestamp(),
        }
    )
    signed["Signature"] = compute_signature(method, signed, secret)
    return signed


def parse_timestamp(value: str) -> float:
    """Parse the Timestamp parameter (ISO 8601, UTC 'Z') into Unix seconds."""
    text = value.strip()
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?Z", text, re.ASCII):
        raise ApiError(
            "InvalidTimeStamp.Format", "Specified time stamp or date value is not well formatted."
        )
    try:
        parsed = dt.datetime.fromisoformat(text[:-1]).replace(tzinfo=dt.timezone.utc)
    except ValueError as exc:
        raise ApiError(
            "InvalidTimeStamp.Format", "Specified time stamp or date value is not well formatted."
        ) from exc
    return parsed.timestamp()


def check_common(params: Mapping[str, str], now: float) -> None:
    """Validate the common parameters that do not need the secret."""
    for name in ("AccessKeyId", "Signature", "SignatureNonce", "Timestamp"):
        if not params.get(name):
            raise missing(name)
    method = params.get("SignatureMethod", "HMAC-SHA1")
    if method != "HMAC-SHA1":
        raise ApiError("InvalidSignatureMethod", "Specified signature method is not supported.")
    if params.get("SignatureVersion", "1.0") != "1.0":
        raise ApiError("InvalidSignatureVersion", "Specified signature version is not supported.")
    if len(params["SignatureNonce"]) > 128:
        raise invalid("SignatureNonce", "It must be at most 128 characters.")
    when = parse_timestamp(params["Timestamp"])
    if abs(now - when) > TIMESTAMP_WINDOW:
        raise ApiError("InvalidTimeStamp.Expired", "Specified time stamp or date value is expired.")
    fmt = params.get("Format", "JSON").upper()
    if fmt not in ("JSON", "XML"):
        raise invalid("Format")
    version = params.get("Version")
    if not version:
        raise missing("Version")
    if version != API_VERSION:
        raise ApiError("InvalidVersion", "Specified parameter Version is not valid.")


def verify_signature(method: str, params: Mapping[str, str], secret: str) -> None:
    """Raise SignatureDoesNotMatch unless the request was signed with `secret`."""
    expected = compute_signature(method, params, secret)
    if not hmac.compare_digest(expected.encode(), params.get("Signature", "").encode()):
        raise ApiError(
            "SignatureDoesNotMatch",
            "Specified signature is not matched with our calculation. server string to sign is:"
            + string_to_sign(method, params),
        )


def parse_form(query: bytes, body: bytes) -> dict[str, str]:
    """Merge URL query and form body parameters; a key given twice is refused."""
    params: dict[str, str] = {}
    for raw in (query, body):
        if not raw:
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ApiError("InvalidParameter", "The request is not valid UTF-8.") from exc
        for key, value in urllib.parse.parse_qsl(text, keep_blank_values=True):
            if "\x00" in key or "\x00" in value:
                raise invalid(key.replace("\x00", ""), "It must not contain NUL characters.")
            if key in params and params[key] != value:
                raise invalid(key, "It was given more than once.")
            params[key] = value
    return params


# Params has methods named like the builtins; annotations inside it spell builtins.X.


class NonceWriter(Protocol):
    """What stores a signed request's nonce in an action's own write transaction
    (server/api/__init__.py SignedNonce)."""

    async def write(self, store: Any, fn: Any, key: str = ...) -> Any: ...


class Params:
    """Typed access to one request's parameters, raising the real API's errors; `nonce`, for
    an action that stores its request's nonce in its own transaction (server/api action)."""

    def __init__(self, raw: Mapping[str, str], nonce: NonceWriter | None = None) -> None:
        self.raw = dict(raw)
        self.nonce = nonce

    def str(
        self,
        name: builtins.str,
        required: builtins.bool = False,
        max_len: builtins.int = 0,
        default: builtins.str = "",
        too_long: Code = ("InvalidParameter", 400),
    ) -> builtins.str:
        """A string parameter; empty counts as absent."""
        value = self.raw.get(name, "")
        if value == "":
            if required:
                raise missing(name)
            return default
        if max_len and len(value) > max_len:
            raise invalid(name, f"It must be at most {max_len} characters.", *too_long)
        return value

    def int(
        self,
        name: builtins.str,
        default: builtins.int | None = None,
        low: builtins.int | None = None,
        high: builtins.int | None = None,
        out_of_range: Code = ("InvalidParameter", 400),
    ) -> builtins.int | None:
        """An integer parameter within [low, high]."""
        value = self.raw.get(name, "")
        if value == "":
            return default
        if not re.fullmatch(r"[+-]?[0-9]{1,18}", value.strip()):
            raise invalid(name, "It must be an integer.")
        number = int(value)
        if (low is not None and number < low) or (high is not None and number > high):
            raise invalid(name, f"It must be between {low} and {high}.", *out_of_range)
        return number

    def bool(self, name: builtins.str, default: builtins.bool = False) -> builtins.bool:
        """A boolean parameter: true/false, any case."""
        value = self.raw.get(name, "").strip().lower()
        if value == "":
            return default
        if value not in ("true", "false"):
            raise invalid(name, "It must be true or false.")
        return value == "true"

    def enum(
        self,
        name: builtins.str,
        choices: tuple[builtins.str, ...],
        default: builtins.str = "",
        unknown: Code = ("InvalidParameter", 400),
    ) -> builtins.str:
        """One of `choices` (case-insensitive match, canonical spelling returned)."""
        value = self.raw.get(name, "")
        if value == "":
            return default
        for choice in choices:
            if choice.lower() == value.lower():
                return choice
        raise invalid(name, f"Valid values: {', '.join(choices)}.", *unknown)

    def list(
        self,
        name: builtins.str,
        max_items: builtins.int = MAX_LIST_ITEMS,
        too_many: Code = ("InvalidParameter", 400),
    ) -> builtins.list[builtins.str]:
        """A repeated parameter: ``Name.1``, ``Name.2`` … or a JSON list under ``Names``."""
        items: dict[builtins.int, builtins.str] = {}
        for key, value in self.raw.items():
            match = _LIST_KEY.match(key)
            if match and match.group(1) == name:
                index = int(match.group(2))
                if index < 1:
                    raise invalid(key)
                items[index] = value
        values = [items[i] for i in sorted(items)]
        plural = self.raw.get(name + "s", "")
        if plural:
            values.extend(parse_json_list(name + "s", plural))
        values = [v for v in values if v != ""]
        if len(values) > max_items:
            raise invalid(name, f"At most {max_items} values are allowed.", *too_many)
        return list(dict.fromkeys(values))

    def region(self) -> builtins.str:
        """RegionId (DEFAULT_REGION when absent): resources belong to the region they were
        created in."""
        value = self.raw.get("RegionId", "") or DEFAULT_REGION
        if not _REGION.match(value):
            raise invalid("RegionId", "It must look like cn-hangzhou.", "InvalidRegionId.Malformed")
        return value

    def page(self) -> Page:
        """The page asked for: NextToken + MaxResults, or PageNumber (from 1) + PageSize
        (1..50, default 10), as the real API takes either."""
        token = self.str("NextToken", max_len=256, too_long=BAD_NEXT_TOKEN)
        max_results = self.int(
            "MaxResults", None, 1, MAX_PAGE_SIZE, ("InvalidParameter.MaxResults", 400)
        )
        size = max_results or self.int(
            "PageSize", 10, 1, MAX_PAGE_SIZE, ("InvalidParam.PageSize", 400)
        )
        assert size is not None
        if token:
            offset = decode_next_token(token)
            return Page(offset, size, offset // size + 1)
        number = self.int("PageNumber", 1, 1, 10**9, ("InvalidParam.PageNumber", 400))
        assert number is not None
        return Page((number - 1) * size, size, number)


@dataclasses.dataclass(frozen=True)
class Page:
    """Rows [offset, offset + size) of a listing."""

    offset: builtins.int
    size: builtins.int
    number: builtins.int

    def fields(self, total: builtins.int) -> dict[str, Any]:
        """The paging fields of a response: a NextToken while more rows follow."""
        following = self.offset + self.size
        return {
            "TotalCount": total,
            "PageNumber": self.number,
            "PageSize": self.size,
            "NextToken": encode_next_token(following) if following < total else "",
        }


def xml_text(value: str) -> str:
    """`value` with every character XML 1.0 forbids (ANSI escapes' ESC, \\x01…) as U+FFFD."""
    return _NOT_XML.sub("\ufffd", value)


def to_xml(root: str, body: Mapping[str, Any]) -> bytes:
    """A response in the real API's XML form (Format=XML): a dict is a sequence of elements, a
    list repeats its key's element, True/False are true/false, None is an empty element; text
    XML cannot carry is replaced (xml_text), so the document is always well-formed."""
    from xml.etree import ElementTree as ET

    def fill(element: ET.Element, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                add(element, str(key), item)
        elif isinstance(value, bool):
            element.text = "true" if value else "false"
        elif value is not None:
            element.text = xml_text(str(value))

    def add(parent: ET.Element, key: str, value: Any) -> None:
        for item in value if isinstance(value, list) else [value]:
            fill(ET.SubElement(parent, key), item)

    top = ET.Element(root)
    fill(top, body)
    return b"<?xml version='1.0' encoding='UTF-8'?>" + ET.tostring(top, encoding="utf-8")


def encode_next_token(offset: builtins.int) -> str:
    """An opaque NextToken for the row at `offset`."""
    return base64.urlsafe_b64encode(f"assist:{offset}".encode()).decode().rstrip("=")


def decode_next_token(token: str) -> builtins.int:
    """The offset a NextToken of ours stands for; InvalidParameter for anything else."""
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        text = ""
    prefix, _, number = text.partition(":")
    offset = ascii_int(number, 12) if prefix == "assist" else None
    if offset is None:
        raise invalid("NextToken", "Use the NextToken of the previous response.", *BAD_NEXT_TOKEN)
    return offset


def parse_json_list(name: str, text: str) -> list[str]:
    """A JSON list of strings, as the API accepts for InstanceIds and the like."""
    try:
        value = load_json(text)
    except ValueError as exc:
        raise invalid(name, "It must be a JSON list of strings.") from exc
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise invalid(name, "It must be a JSON list of strings.")
    return value


# --- signature v3 (ACS3-HMAC-SHA256), docs/operator-api.md -----------------------------------

V3_ALGORITHM = "ACS3-HMAC-SHA256"
# Headers a v3 request must carry and sign (besides host).
V3_HEADERS = (
    "x-acs-action",
    "x-acs-version",
    "x-acs-date",
    "x-acs-signature-nonce",
    "x-acs-content-sha256",
)
_V3_AUTH = re.compile(
    r"^(?P<alg>[A-Z0-9-]+) Credential=(?P<key>[^,\s]+),\s*SignedHeaders=(?P<headers>[a-z0-9;_.-]+),"
    r"\s*Signature=(?P<sig>[0-9a-fA-F]+)$",
    re.ASCII,
)
FORM_TYPE = "application/x-www-form-urlencoded"


@dataclasses.dataclass(frozen=True)
class Caller:
    """Who signed a request, with what nonce and when; `check` raises unless `secret` signed it."""

    key_id: str
    nonce: str
    timestamp: float
    check: Callable[[str], None]


def is_v3(authorization: str) -> bool:
    """True when the Authorization header announces an ACS3 signature."""
    return authorization.strip().startswith("ACS3-")


def incomplete(detail: str) -> ApiError:
    """The answer to a v3 signature that lacks a part it needs."""
    return ApiError(
        "IncompleteSignature",
        f"The request signature does not conform to Aliyun standards. {detail}",
    )


def parse_authorization_v3(value: str) -> tuple[str, str, tuple[str, ...], str]:
    """(algorithm, AccessKeyId, signed header names, hex signature) of an ACS3 Authorization."""
    match = _V3_AUTH.match(value.strip())
    if not match:
        raise incomplete(
            "Expected: ACS3-HMAC-SHA256 Credential=<AccessKeyId>,SignedHeaders=<a;b>,Signature=<hex>."
        )
    if match["alg"] != V3_ALGORITHM:
        raise ApiError(
            "InvalidSignatureMethod",
            f"Specified signature method is not supported: {match['alg']}.",
        )
    names = tuple(match["headers"].split(";"))
    if list(names) != sorted(set(names)) or "" in names:
        raise incomplete("SignedHeaders must be lowercase names, sorted, each once.")
    return match["alg"], match["key"], names, match["sig"].lower()


def canonical_query_v3(params: Mapping[str, str]) -> str:
    """Sorted, RFC 3986-encoded key=value pairs joined by '&' (the v3 CanonicalQueryString)."""
    return "&".join(f"{percent_encode(k)}={percent_encode(v)}" for k, v in sorted(params.items()))


def canonical_headers_v3(headers: Sequence[tuple[str, str]], names: Sequence[str]) -> str:
    """'name:value\\n' per signed header; repeated headers' trimmed values sorted, joined by ','."""
    values: dict[str, list[str]] = {name: [] for name in names}
    for key, value in headers:
        if key.lower() in values:
            values[key.lower()].append(value.strip())
    return "".join(f"{name}:{','.join(sorted(values[name]))}\n" for name in names)


def canonical_request_v3(
    method: str,
    path: str,
    query: Mapping[str, str],
    headers: Sequence[tuple[str, str]],
    names: Sequence[str],
    payload_hash: str,
) -> str:
    """The v3 CanonicalRequest: method, URI, query, headers, signed header names, body hash."""
    return "\n".join(
        [
            method.upper(),
            path or "/",
            canonical_query_v3(query),
            canonical_headers_v3(headers, names),
            ";".join(names),
            payload_hash,
        ]
    )


def compute_signature_v3(secret: str, canonical_request: str) -> str:
    """Hex HMAC-SHA256, keyed by the secret, of 'ACS3-HMAC-SHA256\\n' + hex SHA-256 of the request."""
    digest = hashlib.sha256(canonical_request.encode("utf-8")).hexdigest()
    to_sign = f"{V3_ALGORITHM}\n{digest}"
    return hmac.new(secret.encode("utf-8"), to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def header_value(headers: Sequence[tuple[str, str]], name: str) -> str:
    """The (first) value of header `name`, '' when absent."""
    for key, value in headers:
        if key.lower() == name:
            return value.strip()
    return ""


def read_v3(
    method: str,
    path: str,
    query: bytes,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    now: float,
) -> tuple[dict[str, str], Caller]:
    """Check a v3 request's form (no secret needed) and return its parameters and signer."""
    _, key_id, names, signature = parse_authorization_v3(header_value(headers, "authorization"))
    present = {key.lower() for key, _ in headers}
    for name in V3_HEADERS:
        if name not in present:
            raise missing(name)
    unsigned = sorted(
        n
        for n in present
        if (n.startswith("x-acs-") or n in ("host", "content-type")) and n not in names
    )
    if unsigned:
        raise incomplete(f"These headers must be signed: {', '.join(unsigned)}.")
    absent = [n for n in names if n not in present]
    if absent:
        raise incomplete(f"Signed headers missing from the request: {', '.join(absent)}.")
    payload_hash = header_value(headers, "x-acs-content-sha256").lower()
    if not hmac.compare_digest(payload_hash.encode(), hashlib.sha256(body).hexdigest().encode()):
        raise ApiError(
            "SignatureDoesNotMatch",
            "The x-acs-content-sha256 header is not the SHA-256 of the request body.",
        )
    nonce = header_value(headers, "x-acs-signature-nonce")
    if len(nonce) > 128:
        raise invalid("x-acs-signature-nonce", "It must be at most 128 characters.")
    when = parse_timestamp(header_value(headers, "x-acs-date"))
    if abs(now - when) > TIMESTAMP_WINDOW:
        raise ApiError("InvalidTimeStamp.Expired", "Specified time stamp or date value is expired.")
    if header_value(headers, "x-acs-version") != API_VERSION:
        raise ApiError("InvalidVersion", "Specified parameter Version is not valid.")
    query_params = parse_form(query, b"")
    form = b""
    if body:
        if not header_value(headers, "content-type").lower().startswith(FORM_TYPE):
            raise invalid("body", f"Parameters go in the query or a {FORM_TYPE} body.")
        form = body
    params = parse_form(query, form)
    action = header_value(headers, "x-acs-action")
    for name, value in (("Action", action), ("Version", API_VERSION), ("AccessKeyId", key_id)):
        if params.setdefault(name, value) != value:
            raise invalid(name, "It disagrees with the signed headers.")
    canonical = canonical_request_v3(method, path, query_params, headers, names, payload_hash)

    def check(secret: str) -> None:
        expected = compute_signature_v3(secret, canonical)
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            raise ApiError(
                "SignatureDoesNotMatch",
                "Specified signature is not matched with our calculation. server canonical "
                "request is:" + canonical,
            )

    return params, Caller(key_id, nonce, when, check)


def read_v1(method: str, params: Mapping[str, str], now: float) -> Caller:
    """Check a v1 request's common parameters and return its signer."""
    check_common(params, now)
    return Caller(
        params["AccessKeyId"],
        params["SignatureNonce"],
        parse_timestamp(params["Timestamp"]),
        lambda secret: verify_signature(method, params, secret),
    )


def sign_v3(
    method: str,
    host: str,
    action: str,
    query: Mapping[str, str],
    access_key_id: str,
    secret: str,
    body: bytes = b"",
    extra_headers: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The headers of a v3-signed request (client side; tests and hand-made calls)."""
    headers = {
        "host": host,
        "x-acs-action": action,
        "x-acs-version": API_VERSION,
        "x-acs-date": utc_timestamp(),
        "x-acs-signature-nonce": uuid.uuid4().hex,
        "x-acs-content-sha256": hashlib.sha256(body).hexdigest(),
    }
    if body:
        headers["content-type"] = FORM_TYPE
    headers.update(extra_headers or {})
    names = sorted(headers)
    canonical = canonical_request_v3(
        method, "/", query, list(headers.items()), names, headers["x-acs-content-sha256"]
    )
    signature = compute_signature_v3(secret, canonical)
    headers["Authorization"] = (
        f"{V3_ALGORITHM} Credential={access_key_id},SignedHeaders={';'.join(names)},"
        f"Signature={signature}"
    )
    return headers
