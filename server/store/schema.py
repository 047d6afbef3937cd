"""The schema, in one place, for both SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

schema_version = Table(
    "schema_version",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("version", Integer, nullable=False),
)

access_keys = Table(
    "access_keys",
    metadata,
    Column("access_key_id", String(64), primary_key=True),
    Column("secret", String(128), nullable=False),
    Column("account", String(128), nullable=False, index=True),
    Column("created_ms", BigInteger, nullable=False),
    Column("enabled", Boolean, nullable=False, default=True),
)

nonces = Table(
    "nonces",
    metadata,
    Column("nonce", String(256), primary_key=True),  # scope:key:nonce
    Column("expires", BigInteger, nullable=False, index=True),  # Unix seconds
)

commands = Table(
    "commands",
    metadata,
    Column("command_id", String(64), primary_key=True),
    Column("account", String(128), nullable=False),
    Column("name", String(256), nullable=False),
    Column("description", Text, nullable=False, default=""),
    Column("type", String(32), nullable=False),
    Column("content", Text, nullable=False),  # base64
    Column("working_dir", String(256), nullable=False, default=""),
    Column("timeout", Integer, nullable=False),
    Column("enable_parameter", Boolean, nullable=False, default=False),
    Column("parameter_names", Text, nullable=False, default="[]"),  # JSON list
    Column("created", String(32), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    # no longer kept up to date: InvokeTimes is counted when asked (store/commands.py)
    Column("invoke_times", Integer, nullable=False, default=0),
    # schema version 6: the region the command was created in (RegionId scoping)
    Column("region_id", String(64), nullable=False, server_default="cn-hangzhou"),
    # schema version 15: the launcher command line the script runs under ('' : the interpreter)
    Column("launcher", Text, nullable=False, server_default=""),
    Index("ix_commands_account_created", "account", "created_ms"),
)

invocations = Table(
    "invocations",
    metadata,
    Column("invoke_id", String(64), primary_key=True),
    Column("account", String(128), nullable=False),
    Column("command_id", String(64), nullable=False, index=True),
    Column("command_name", String(256), nullable=False),
    Column("command_type", String(32), nullable=False),
    Column("command_description", Text, nullable=False, default=""),
    Column("content", Text, nullable=False),  # base64, custom parameters substituted
    Column("parameters", Text, nullable=False, default="{}"),  # JSON object
    Column("timed", Boolean, nullable=False),
    Column("repeat_mode", String(32), nullable=False),
    Column("frequency", String(256), nullable=False, default=""),
    Column("username", String(256), nullable=False, default=""),
    Column("working_dir", String(256), nullable=False, default=""),
    Column("timeout", Integer, nullable=False),
    Column("created", String(32), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("revision", Integer, nullable=False, default=1),
    Column("stopped", Boolean, nullable=False, default=False),
    # schema version 5: the script before {{parameter}} substitution ('' without parameters),
    # so ModifyInvocationAttribute can apply new Parameters
    Column("template", Text, nullable=False, server_default=""),
    Column("region_id", String(64), nullable=False, server_default="cn-hangzhou"),  # version 6
    # schema version 15: Launcher, and TerminationMode (Process | ProcessTree)
    Column("launcher", Text, nullable=False, server_default=""),
    Column("termination_mode", String(16), nullable=False, server_default="Process"),
    Index("ix_invocations_account_created", "account", "created_ms"),
)

# One row per (invocation, instance): the latest execution's result plus delivery state.
invocation_instances = Table(
    "invocation_instances",
    metadata,
    Column("invoke_id", String(64), primary_key=True),
    Column("instance_id", String(64), primary_key=True),
    Column("account", String(128), nullable=False),
    Column("status", String(32), nullable=False),
    Column("active", Boolean, nullable=False, default=True),  # the agent should have it
    Column("delivered", Boolean, nullable=False, default=False),
    Column("stop_requested", Boolean, nullable=False, default=False),
    Column("execution_id", String(32), nullable=False, default=""),
    Column("exit_code", BigInteger, nullable=True),
    Column("output", Text, nullable=False, default=""),
    Column("dropped", BigInteger, nullable=False, default=0),
    Column("error_code", String(128), nullable=False, default=""),
    Column("error_info", Text, nullable=False, default=""),
    Column("start_ms", BigInteger, nullable=True),
    Column("finish_ms", BigInteger, nullable=True),
    Column("stop_ms", BigInteger, nullable=True),
    Column("repeats", Integer, nullable=False, default=0),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    Index("ix_ii_instance_active", "instance_id", "active"),
)

executions = Table(
    "executions",
    metadata,
    Column("invoke_id", String(64), primary_key=True),
    Column("instance_id", String(64), primary_key=True),
    Column("execution_id", String(32), primary_key=True),
    Column("status", String(32), nullable=False),
    Column("terminal", Boolean, nullable=False, default=False),
    Column("exit_code", BigInteger, nullable=True),
    Column("start_ms", BigInteger, nullable=True),
    Column("finish_ms", BigInteger, nullable=True),
    # schema version 2: each run's own result, for DescribeInvocationResults IncludeHistory
    Column("output", Text, nullable=False, server_default=""),  # base64 tail
    Column("dropped", BigInteger, nullable=False, server_default="0"),
    Column("error_code", String(128), nullable=False, server_default=""),
    Column("error_info", Text, nullable=False, server_default=""),
)

output_chunks = Table(
    "output_chunks",
    metadata,
    Column("invoke_id", String(64), primary_key=True),
    Column("instance_id", String(64), primary_key=True),
    Column("execution_id", String(32), primary_key=True),
    Column("chunk_offset", BigInteger, primary_key=True),
    Column("data", Text, nullable=False),  # base64
)

activations = Table(
    "activations",
    metadata,
    Column("activation_id", String(64), primary_key=True),
    Column("account", String(128), nullable=False, index=True),
    Column("code_hash", String(128), nullable=False),  # sha256 hex of the code
    Column("description", Text, nullable=False, default=""),
    Column("instance_name", String(256), nullable=False, default=""),
    Column("instance_count", Integer, nullable=False),
    Column("registered_count", Integer, nullable=False, default=0),
    Column("deregistered_count", Integer, nullable=False, default=0),
    Column("ip_address_range", String(256), nullable=False, default="0.0.0.0/0"),
    Column("ttl_hours", Integer, nullable=False),
    Column("created", String(32), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("region_id", String(64), nullable=False, server_default="cn-hangzhou"),  # version 6
)

instances = Table(
    "instances",
    metadata,
    Column("instance_id", String(64), primary_key=True),
    Column("account", String(128), nullable=False, index=True),
    Column("activation_id", String(64), nullable=False),
    Column("public_key", String(128), nullable=False),  # base64 raw Ed25519
    Column("instance_name", String(256), nullable=False, default=""),
    Column("hostname", String(256), nullable=False, default=""),
    Column("os_type", String(32), nullable=False, default="linux"),
    Column("agent_version", String(64), nullable=False, default=""),
    Column("ip", String(64), nullable=False, default=""),
    Column("registered", String(32), nullable=False),
    Column("registered_ms", BigInteger, nullable=False),
    Column("last_seen_ms", BigInteger, nullable=False, default=0),
    Column("heartbeat_interval", Integer, nullable=False, default=60),
    Column("last_invoked_ms", BigInteger, nullable=False, default=0),
    Column("invocation_count", Integer, nullable=False, default=0),
    Column("deregistered", Boolean, nullable=False, default=False),
    Column("update_requested", Boolean, nullable=False, default=False),
    Column("update_version", String(64), nullable=False, default=""),
    # schema version 15: the region of the activation the instance registered with
    Column("region_id", String(64), nullable=False, server_default="cn-hangzhou"),
)

# schema version 3: ClientToken of create-type calls, with the first call's answer (docs/operator-api.md)
client_tokens = Table(
    "client_tokens",
    metadata,
    Column("account", String(128), primary_key=True),
    Column("action", String(64), primary_key=True),
    Column("token", String(64), primary_key=True),
    Column("fingerprint", String(64), nullable=False),  # sha256 hex of the business parameters
    Column("result", Text, nullable=False),  # JSON of the first answer
    Column("expires_ms", BigInteger, nullable=False, index=True),
)

# schema version 4: tags of commands, invocations, activations and managed instances
tags = Table(
    "tags",
    metadata,
    Column("account", String(128), primary_key=True),
    Column("resource_type", String(32), primary_key=True),
    Column("resource_id", String(64), primary_key=True),
    Column("tag_key", String(128), primary_key=True),
    Column("tag_value", String(128), nullable=False, default=""),
    Index("ix_tags_lookup", "account", "resource_type", "tag_key", "tag_value"),
)

# schema version 13: SendFile (server/api/files.py); the content is kept as base64 of the file's
# bytes whatever ContentType the caller used
send_files = Table(
    "send_files",
    metadata,
    Column("invoke_id", String(64), primary_key=True),
    Column("account", String(128), nullable=False),
    Column("region_id", String(64), nullable=False),
    Column("name", String(256), nullable=False),
    Column("description", Text, nullable=False, default=""),
    Column("content", Text, nullable=False),
    Column("content_type", String(16), nullable=False),
    Column("target_dir", String(256), nullable=False),
    Column("file_mode", String(8), nullable=False),
    Column("file_owner", String(64), nullable=False),
    Column("file_group", String(64), nullable=False),
    Column("overwrite", Boolean, nullable=False),
    Column("timeout", Integer, nullable=False),
    Column("created", String(32), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Index("ix_send_files_account_created", "account", "created_ms"),
)

# One row per (file task, instance): Pending until listed to the agent, Running once listed,
# then the agent's Success / Failed, or Timeout / Invalid from the server.
send_file_instances = Table(
    "send_file_instances",
    metadata,
    Column("invoke_id", String(64), primary_key=True),
    Column("instance_id", String(64), primary_key=True),
    Column("status", String(32), nullable=False),
    Column("error_code", String(128), nullable=False, default=""),
    Column("error_info", Text, nullable=False, default=""),
    Column("created_ms", BigInteger, nullable=False),
    Column("deadline_ms", BigInteger, nullable=False),
    Column("start_ms", BigInteger, nullable=True),
    Column("finish_ms", BigInteger, nullable=True),
    Column("updated_ms", BigInteger, nullable=False),
    Index("ix_sfi_instance_status", "instance_id", "status"),
)

# schema version 14: Cloud Assistant settings per account and region (ModifyCloudAssistantSettings)
cloud_assistant_settings = Table(
    "cloud_assistant_settings",
    metadata,
    Column("account", String(128), primary_key=True),
    Column("region_id", String(64), primary_key=True),
    Column("setting_type", String(64), primary_key=True),
    Column("value", Text, nullable=False),  # JSON object, the setting's fields
    Column("updated_ms", BigInteger, nullable=False),
)
