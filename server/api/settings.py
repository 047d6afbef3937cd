"""DescribeCloudAssistantSettings and ModifyCloudAssistantSettings (SettingType
AgentUpgradeConfig): per account and region; agents of the region receive it, signed, in
update_check (docs/operator-api.md, docs/agent-protocol.md)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from common.upgradewindow import InvalidWindowError, UpgradePolicy, parse_windows, zone_of
from server import model
from server.api import action
from server.inputs import load_json
from server.rpc import Params, invalid, missing
from server.store import settings as store
from server.store.conn import Conn

if TYPE_CHECKING:
    from server.state import ServerState

AGENT_UPGRADE = store.AGENT_UPGRADE
SUPPORTED = (AGENT_UPGRADE,)
# Setting types of the real API this server does not keep.
UNSUPPORTED = ("SessionManagerDelivery", "InvocationDelivery", "SessionManagerConfig")
# Fields of AgentUpgradeConfig, as the SDKs send them (a JSON object) or flattened (.N lists).
_FIELDS = ("Enabled", "AllowedUpgradeWindow", "TimeZone", "DisableUpgrade")
_FLAT = re.compile(r"^AgentUpgradeConfig\.([A-Za-z]+)(?:\.([0-9]{1,4}))?$")
_OTHER_CONFIGS = re.compile(
    r"^(OssDeliveryConfig|SlsDeliveryConfig|ResourceUsageConfig|SessionManagerConfig)(\..*)?$"
)


def _supported_types(name: str, kinds: list[str]) -> None:
    for kind in kinds:
        if kind not in SUPPORTED:
            known = "a setting type this server does not keep" if kind in UNSUPPORTED else ""
            raise invalid(
                name,
                f"{kind!r} is {known or 'unknown'}; supported: {', '.join(SUPPORTED)}.",
            )


def render(policy: UpgradePolicy) -> dict[str, Any]:
    """The AgentUpgradeConfig of DescribeCloudAssistantSettings."""
    return {
        "Enabled": policy.enabled,
        "AllowedUpgradeWindows": {"AllowedUpgradeWindow": [str(w) for w in policy.windows]},
        "TimeZone": policy.time_zone,
        "DisableUpgrade": policy.disabled,
    }


def stored_policy(value: dict[str, Any] | None) -> UpgradePolicy:
    """A stored setting as a policy (the defaults when the region has none)."""
    return UpgradePolicy() if value is None else UpgradePolicy.from_wire(value)


@action("DescribeCloudAssistantSettings")
async def describe_settings(state: ServerState, account: str, p: Params) -> dict[str, Any]:
    """The settings of SettingType.N in the request's region."""
    kinds = p.list("SettingType")
    if not kinds:
        raise missing("SettingType.1")
    _supported_types("SettingType", kinds)
    region = p.region()

    async def _tx(conn: Conn) -> Any:
        return await store.get_setting(conn, account, region, AGENT_UPGRADE)

    value = await state.store.read(_tx)
    return {AGENT_UPGRADE: render(stored_policy(value))}


def _given_fields(p: Params) -> dict[str, Any]:
    """AgentUpgradeConfig's fields: the JSON object the SDKs send, or flattened parameters."""
    fields: dict[str, Any] = {}
    raw = p.raw.get(AGENT_UPGRADE, "")
    if raw:
        try:
            value = load_json(raw)
        except ValueError as exc:
            raise invalid(AGENT_UPGRADE, "It must be a JSON object.") from exc
        if not isinstance(value, dict):
            raise invalid(AGENT_UPGRADE, "It must be a JSON object.")
        fields.update(value)
    windows: dict[int, str] = {}
    for key, value in p.raw.items():
        match = _FLAT.match(key)
        if match and match.group(1) == "AllowedUpgradeWindow" and match.group(2):
            windows[int(match.group(2))] = value
        elif match and not match.group(2):
            fields[match.group(1)] = value
        elif key.startswith(AGENT_UPGRADE + "."):
            raise invalid(key, f"Unknown field; {AGENT_UPGRADE} takes {', '.join(_FIELDS)}.")
    if windows:
        fields["AllowedUpgradeWindow"] = [windows[i] for i in sorted(windows) if windows[i]]
    for name in fields:
        if name not in _FIELDS:
            detail = "This server does not implement it." if name == "BootstrapUpgrade" else ""
            unknown = f"Unknown field; {AGENT_UPGRADE} takes {', '.join(_FIELDS)}."
            raise invalid(f"{AGENT_UPGRADE}.{name}", detail or unknown)
    return fields


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise invalid(f"{AGENT_UPGRADE}.{name}", "It must be true or false.")


def merged_policy(current: UpgradePolicy, fields: dict[str, Any]) -> UpgradePolicy:
    """The stored policy with the given fields replaced, checked against the API's rules."""
    enabled, disabled = current.enabled, current.disabled
    windows, zone = [str(w) for w in current.windows], current.time_zone
    if "Enabled" in fields:
        enabled = _as_bool("Enabled", fields["Enabled"])
    if "DisableUpgrade" in fields:
        disabled = _as_bool("DisableUpgrade", fields["DisableUpgrade"])
    if "AllowedUpgradeWindow" in fields:
        given = fields["AllowedUpgradeWindow"]
        if not isinstance(given, list) or not all(isinstance(w, str) for w in given):
            raise invalid(f"{AGENT_UPGRADE}.AllowedUpgradeWindow", "It must be a list of strings.")
        windows = given
    if "TimeZone" in fields:
        zone = str(fields["TimeZone"] or "UTC")
    try:
        checked = parse_windows(windows)
    except InvalidWindowError as exc:
        raise invalid(f"{AGENT_UPGRADE}.AllowedUpgradeWindow", exc.message + ".") from exc
    try:
        zone_of(zone)
    except InvalidWindowError as exc:
        raise invalid(f"{AGENT_UPGRADE}.TimeZone", exc.message + ".") from exc
    if enabled and not checked:
        raise missing(f"{AGENT_UPGRADE}.AllowedUpgradeWindow")
    return UpgradePolicy(enabled, tuple(checked), zone, disabled)


@action("ModifyCloudAssistantSettings")
async def modify_settings(state: ServerState, account: str, p: Params) -> dict[str, Any]:
    """Change the region's AgentUpgradeConfig (fields not given keep their values) and tell
    the region's agents to fetch it."""
    kind = p.str("SettingType", required=True)
    _supported_types("SettingType", [kind])
    others = sorted(k for k in p.raw if _OTHER_CONFIGS.match(k) and p.raw[k] != "")
    if others:
        raise invalid(others[0], f"Only {AGENT_UPGRADE} is supported.")
    fields = _given_fields(p)
    region = p.region()

    async def _tx(conn: Conn) -> Any:
        current = stored_policy(await store.get_setting(conn, account, region, AGENT_UPGRADE))
        policy = merged_policy(current, fields)
        await store.put_setting(
            conn, account, region, AGENT_UPGRADE, policy.to_wire(), model.now_ms()
        )
        return await store.region_instances(conn, account, region)

    targets = await state.store.write(_tx)
    await state.notifier.publish(targets, {"type": "settings"})
    return {}
