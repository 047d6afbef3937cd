"""TagResources, UntagResources, ListTagResources, and the Tag.N parameters of the other actions
(docs/operator-api.md)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from server.api import action
from server.errors import require_found
from server.rpc import ApiError, Params, invalid, missing
from server.store import tags as store_tags
from server.store.conn import Conn

if TYPE_CHECKING:
    from server.state import ServerState

MAX_TAGS = 20  # per call and per resource, as the real API
MAX_TAG_TEXT = 128
MAX_RESOURCES = 50
_TAG_INDEX = re.compile(r"^Tag\.([0-9]{1,4})\.(Key|Value)$")
_RESERVED = ("aliyun", "acs:")


def check_tag_text(what: str, text: str) -> None:
    """A tag key or value: at most 128 characters, no aliyun/acs: prefix, no URL."""
    code = f"InvalidTag{what}.Malformed"
    lowered = text.lower()
    if (
        len(text) > MAX_TAG_TEXT
        or lowered.startswith(_RESERVED)
        or "http://" in lowered
        or "https://" in lowered
    ):
        raise ApiError(
            code,
            f"The specified Tag.n.{what} is not valid: at most {MAX_TAG_TEXT} characters, not "
            "starting with aliyun or acs:, without http:// or https://.",
        )


def read_tags(p: Params) -> list[tuple[str, str | None]]:
    """Tag.N.Key / Tag.N.Value in N order; a value not given is None."""
    found: dict[int, dict[str, str]] = {}
    for name, value in p.raw.items():
        match = _TAG_INDEX.match(name)
        if match:
            found.setdefault(int(match.group(1)), {})[match.group(2)] = value
    if len(found) > MAX_TAGS:
        raise invalid("Tag", f"At most {MAX_TAGS} tags are allowed.", "InvalidTagCount")
    pairs: list[tuple[str, str | None]] = []
    for index in sorted(found):
        key = found[index].get("Key", "")
        if not key:
            raise ApiError("InvalidTagKey.Malformed", f"Tag.{index}.Key must be given, not empty.")
        check_tag_text("Key", key)
        tag_value = found[index].get("Value")
        if tag_value is not None:
            check_tag_text("Value", tag_value)
        pairs.append((key, tag_value))
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise invalid("Tag", "A tag key was given twice.", "InvalidTagKey.Duplicated")
    return pairs


def tags_to_set(p: Params) -> list[tuple[str, str]]:
    """The tags a create call puts on its resource (a missing value is '')."""
    return [(k, v or "") for k, v in read_tags(p)]


def render_tags(pairs: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"TagKey": k, "TagValue": v} for k, v in pairs]


def resource_type(p: Params) -> str:
    """ResourceType: command, invocation, activation or managedinstance."""
    value = p.str("ResourceType", required=True).lower()
    if value not in store_tags.RESOURCES:
        raise ApiError(
            "InvalidResourceType.NotFound",
            f"The specified ResourceType is not supported; valid: {', '.join(store_tags.RESOURCES)}.",
            404,
        )
    return value


async def require_resources(
    conn: Conn, account: str, rtype: str, ids: list[str], region: str
) -> None:
    """Raise InvalidResourceId.NotFound unless every id is the account's resource there."""
    found = await store_tags.existing_resources(conn, account, rtype, ids, region)
    require_found(ids, found, "InvalidResourceId.NotFound", "resource")


async def add_tags(
    conn: Conn, account: str, rtype: str, ids: list[str], pairs: list[tuple[str, str]]
) -> None:
    """Tag resources, refusing to take any past MAX_TAGS tags."""
    if not pairs:
        return
    current = await store_tags.tags_of(conn, account, rtype, ids)
    for rid in ids:
        keys = {k for k, _ in current.get(rid, [])} | {k for k, _ in pairs}
        if len(keys) > MAX_TAGS:
            raise ApiError(
                "InvalidTagCount",
                f"{rid} would have {len(keys)} tags; at most {MAX_TAGS} are allowed.",
            )
    await store_tags.set_tags(conn, account, rtype, ids, pairs)


@action("TagResources", tags=True)
async def tag_resources(state: ServerState, account: str, p: Params) -> dict[str, Any]:
    """Add or overwrite tags on resources of one type."""
    rtype = resource_type(p)
    ids = p.list("ResourceId", max_items=MAX_RESOURCES)
    if not ids:
        raise missing("ResourceId.1")
    pairs = tags_to_set(p)
    if not pairs:
        raise missing("Tag.1.Key")

    async def _tx(conn: Conn) -> None:
        await require_resources(conn, account, rtype, ids, p.region())
        await add_tags(conn, account, rtype, ids, pairs)

    await state.store.write(_tx)
    return {}


@action("UntagResources")
async def untag_resources(state: ServerState, account: str, p: Params) -> dict[str, Any]:
    """Remove the tags TagKey.N (or, with All=true, every tag) from resources."""
    rtype = resource_type(p)
    ids = p.list("ResourceId", max_items=MAX_RESOURCES)
    if not ids:
        raise missing("ResourceId.1")
    keys = p.list("TagKey", max_items=MAX_TAGS)
    remove_all = p.bool("All", False)
    if not keys and not remove_all:
        raise missing("TagKey.1")

    async def _tx(conn: Conn) -> None:
        await require_resources(conn, account, rtype, ids, p.region())
        await store_tags.remove_tags(conn, account, rtype, ids, None if remove_all else keys)

    await state.store.write(_tx)
    return {}


@action("ListTagResources", tags=True)
async def list_tag_resources(state: ServerState, account: str, p: Params) -> dict[str, Any]:
    """The tags of the given resources, or the resources that carry the given tags."""
    rtype = resource_type(p)
    ids = p.list("ResourceId", max_items=MAX_RESOURCES)
    wanted = read_tags(p)
    if not ids and not wanted:
        raise missing("ResourceId.1")
    page = p.page()

    async def _tx(conn: Conn) -> Any:
        return await store_tags.list_tag_resources(
            conn, account, rtype, ids, wanted, page.offset, page.size, p.region()
        )

    total, rows = await state.store.read(_tx)
    return {
        "NextToken": page.fields(total)["NextToken"],
        "TagResources": {
            "TagResource": [
                {
                    "ResourceType": rtype,
                    "ResourceId": r["resource_id"],
                    "TagKey": r["tag_key"],
                    "TagValue": r["tag_value"],
                }
                for r in rows
            ]
        },
    }
