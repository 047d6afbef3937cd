"""Every query the server runs, by table group; this module gathers their names in one place.

The queries live in access.py (AccessKeys, nonces), commands.py, instances.py (instances and
activations), invocations.py (invocations and results) and tasks.py (the agent side). Callers
that use one group import it directly.
"""

from __future__ import annotations

from server.store.access import (
    create_access_key,
    get_access_key,
    list_access_keys,
    purge_nonces,
    set_access_key_enabled,
    use_nonce,
)
from server.store.commands import (
    delete_command,
    get_command,
    insert_command,
    list_commands,
    update_command,
)
from server.store.instances import (
    active_task_counts,
    claim_activation,
    deregister_instance,
    existing_instances,
    get_activation,
    get_instance,
    hash_code,
    insert_activation,
    list_activations,
    list_instances,
    request_update,
    take_update,
    upsert_instance,
)
from server.store.invocations import (
    get_invocation,
    insert_invocation,
    instance_results,
    list_execution_results,
    list_invocations,
    list_results,
    running_output,
    stop_invocation,
)
from server.store.rows import Row
from server.store.tasks import (
    OFFLINE_ERROR,
    fail_abandoned_tasks,
    purge_history,
    record_running,
    record_terminal,
    tasks_for,
)

__all__ = [
    "OFFLINE_ERROR",
    "Row",
    "active_task_counts",
    "claim_activation",
    "create_access_key",
    "delete_command",
    "deregister_instance",
    "existing_instances",
    "fail_abandoned_tasks",
    "get_access_key",
    "get_activation",
    "get_command",
    "get_instance",
    "get_invocation",
    "hash_code",
    "insert_activation",
    "insert_command",
    "insert_invocation",
    "instance_results",
    "list_access_keys",
    "list_activations",
    "list_commands",
    "list_execution_results",
    "list_instances",
    "list_invocations",
    "list_results",
    "purge_history",
    "purge_nonces",
    "record_running",
    "record_terminal",
    "request_update",
    "running_output",
    "set_access_key_enabled",
    "stop_invocation",
    "take_update",
    "tasks_for",
    "update_command",
    "upsert_instance",
    "use_nonce",
]
