"""DescribeCloudAssistantSettings / ModifyCloudAssistantSettings (AgentUpgradeConfig) against a
real server on SQLite and PostgreSQL: both official SDKs, the API's validation, scoping by account
and region, and delivery to the region's agents (notify event + signed update_check answer)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from serverkit import Api, migrate_sqlite, tea_client

from server.store.migrations import LATEST

UPGRADE = "AgentUpgradeConfig"
DEFAULTS = {
    "Enabled": False,
    "AllowedUpgradeWindows": {"AllowedUpgradeWindow": []},
    "TimeZone": "UTC",
    "DisableUpgrade": False,
}


def describe(api: Api, region: str = "cn-hangzhou") -> dict[str, Any]:
    body = api.ok("DescribeCloudAssistantSettings", RegionId=region, **{"SettingType.1": UPGRADE})
    return dict(body[UPGRADE])


def modify(api: Api, config: dict[str, Any], region: str = "cn-hangzhou") -> dict[str, Any]:
    return api.ok(
        "ModifyCloudAssistantSettings",
        RegionId=region,
        SettingType=UPGRADE,
        AgentUpgradeConfig=json.dumps(config),
    )


def test_never_set_answers_the_defaults(api: Api) -> None:
    assert describe(api) == DEFAULTS


def test_the_official_sdks_set_and_read_the_setting(api: Api) -> None:
    from alibabacloud_ecs20140526 import models
    from aliyunsdkecs.request.v20140526 import (
        DescribeCloudAssistantSettingsRequest,
        ModifyCloudAssistantSettingsRequest,
    )

    tea = tea_client(api.server, api.key_id, api.secret)  # signature v3, defaults
    config = models.ModifyCloudAssistantSettingsRequestAgentUpgradeConfig(
        enabled=True,
        allowed_upgrade_window=["02:00-03:00", "22:00-00:30"],
        time_zone="Asia/Shanghai",
    )
    tea.modify_cloud_assistant_settings(
        models.ModifyCloudAssistantSettingsRequest(
            region_id="cn-hangzhou", setting_type=UPGRADE, agent_upgrade_config=config
        )
    )
    # read back with the older SDK (signature v1)
    request = DescribeCloudAssistantSettingsRequest.DescribeCloudAssistantSettingsRequest()
    request.set_SettingTypes([UPGRADE])
    body = api.sdk(request)
    assert body[UPGRADE] == {
        "Enabled": True,
        "AllowedUpgradeWindows": {"AllowedUpgradeWindow": ["02:00-03:00", "22:00-00:30"]},
        "TimeZone": "Asia/Shanghai",
        "DisableUpgrade": False,
    }
    # the older SDK changes one field; the Tea SDK reads the rest unchanged
    change = ModifyCloudAssistantSettingsRequest.ModifyCloudAssistantSettingsRequest()
    change.set_SettingType(UPGRADE)
    change.set_AgentUpgradeConfig({"DisableUpgrade": True})
    api.sdk(change)
    answer = tea.describe_cloud_assistant_settings(
        models.DescribeCloudAssistantSettingsRequest(
            region_id="cn-hangzhou", setting_type=[UPGRADE]
        )
    ).body.agent_upgrade_config
    assert answer.disable_upgrade is True and answer.enabled is True
    assert answer.allowed_upgrade_windows.allowed_upgrade_window == ["02:00-03:00", "22:00-00:30"]
    assert answer.time_zone == "Asia/Shanghai"


def test_flattened_parameters_are_read_too(api: Api) -> None:
    api.ok(
        "ModifyCloudAssistantSettings",
        SettingType=UPGRADE,
        **{
            "AgentUpgradeConfig.Enabled": "true",
            "AgentUpgradeConfig.AllowedUpgradeWindow.1": "01:00-02:00",
            "AgentUpgradeConfig.TimeZone": "GMT+8:00",
        },
    )
    assert describe(api)["AllowedUpgradeWindows"]["AllowedUpgradeWindow"] == ["01:00-02:00"]
    assert describe(api)["TimeZone"] == "GMT+8:00"


@pytest.mark.parametrize(
    ("params", "code", "named"),
    [
        (
            {"SettingType": "SessionManagerConfig"},
            "InvalidParameter",
            "supported: AgentUpgradeConfig",
        ),
        ({"SettingType": "Nope"}, "InvalidParameter", "supported: AgentUpgradeConfig"),
        ({}, "MissingParameter", "SettingType"),
        ({UPGRADE: '{"AllowedUpgradeWindow": []}'}, "MissingParameter", "AllowedUpgradeWindow"),
        ({UPGRADE: '{"AllowedUpgradeWindow": ["2:00-03:00"]}'}, "InvalidParameter", "HH:MM-HH:MM"),
        ({UPGRADE: '{"AllowedUpgradeWindow": ["02:00-02:30"]}'}, "InvalidParameter", "60 minutes"),
        (
            {UPGRADE: '{"AllowedUpgradeWindow": ["02:00-04:00", "03:00-05:00"]}'},
            "InvalidParameter",
            "overlap",
        ),
        ({UPGRADE: '{"TimeZone": "Mars/Olympus"}'}, "InvalidParameter", "TimeZone"),
        ({UPGRADE: '{"Enabled": "maybe"}'}, "InvalidParameter", "true or false"),
        ({UPGRADE: '{"BootstrapUpgrade": false}'}, "InvalidParameter", "does not implement"),
        ({UPGRADE: "[1, 2]"}, "InvalidParameter", "JSON object"),
        ({"AgentUpgradeConfig.Color": "red"}, "InvalidParameter", "Unknown field"),
        ({"OssDeliveryConfig": '{"Enabled": true}'}, "InvalidParameter", "Only AgentUpgradeConfig"),
    ],
)
def test_invalid_requests_are_refused_and_change_nothing(
    api: Api, params: dict[str, str], code: str, named: str
) -> None:
    modify(api, {"Enabled": True, "AllowedUpgradeWindow": ["02:00-03:00"]})
    before = describe(api)
    params = {"SettingType": UPGRADE, **params} if params else {}
    status, body = api.call("ModifyCloudAssistantSettings", **params)
    assert (status, body["Code"]) == (400, code), body
    assert named in body["Message"]
    assert describe(api) == before


def test_describe_refuses_other_setting_types(api: Api) -> None:
    status, body = api.call(
        "DescribeCloudAssistantSettings", **{"SettingType.1": UPGRADE, "SettingType.2": "Foo"}
    )
    assert (status, body["Code"]) == (400, "InvalidParameter")
    assert "supported: AgentUpgradeConfig" in body["Message"]
    assert api.error("DescribeCloudAssistantSettings") == (400, "MissingParameter")


def test_settings_belong_to_an_account_and_a_region(api: Api) -> None:
    modify(api, {"Enabled": True, "AllowedUpgradeWindow": ["02:00-03:00"]}, region="us-west-1")
    assert describe(api, "us-west-1")["Enabled"] is True
    assert describe(api, "cn-hangzhou") == DEFAULTS
    key_id, secret = api.server.create_access_key("settings-other")
    assert describe(Api(api.server, key_id, secret), "us-west-1") == DEFAULTS


def test_the_regions_agents_are_told_and_receive_it_in_update_check(api: Api) -> None:
    from devkit.server import FakeAgent

    activation = api.ok("CreateActivation", RegionId="us-west-1", InstanceCount=2)
    agent = FakeAgent.register(
        api.server.url, activation["ActivationId"], activation["ActivationCode"]
    )
    elsewhere = api.agent()  # an activation of cn-hangzhou
    body = {"agent_version": "1.0.0", "os": "linux", "arch": "x86_64", "channel": "stable"}
    check = "/luban/api/v1/update/update_check"
    assert agent.post(check, body)["upgrade_config"] is None
    modify(
        api,
        {"Enabled": True, "AllowedUpgradeWindow": ["22:00-01:00"], "TimeZone": "UTC"},
        "us-west-1",
    )
    assert agent.poll(timeout=5) == [{"type": "settings"}]
    assert agent.post(check, body) == {
        "update_now": False,
        "version": "",
        "upgrade_config": {
            "enabled": True,
            "allowed_upgrade_windows": ["22:00-01:00"],
            "time_zone": "UTC",
            "disable_upgrade": False,
        },
    }
    assert elsewhere.poll(timeout=1) == []
    assert elsewhere.post(check, body)["upgrade_config"] is None


def test_a_database_of_the_last_release_gets_the_table(tmp_path: Path) -> None:
    """A database at version 12 (the last release) migrates to the settings table (step 14)."""
    db = tmp_path / "assist.db"
    migrate_sqlite(db)
    with sqlite3.connect(db) as conn:  # as the last release left it
        conn.execute("DROP TABLE cloud_assistant_settings")
        conn.execute("UPDATE schema_version SET version = 12")
    assert migrate_sqlite(db) == {"before": 12, "after": LATEST}
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "cloud_assistant_settings" in tables and LATEST >= 14
