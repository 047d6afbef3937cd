"""assist-agent: the daemon on each VM (docs/agent-protocol.md, docs/agent-state.md).

Where things are:

- cli.py       `assist-agent register | run | status`; server discovery; single-instance lock
- identity.py  Ed25519 key + instance id under state/ (0600), request signing
- client.py    the one HTTP seam to the server (an injected requests.Session)
- daemon.py    the main loop: long-poll, task sync, timed runs, outbox sender, heartbeat,
               crash recovery of executions
- timers.py    the one timer thread (timed runs, scheduled updates) and retry backoff
- updates.py   when to start `assist-update apply`: schedule + splay, server request, busy retry
- runner.py    one execution: script file, interpreter, user, directory, timeout, process group
- pool.py      bounded pool (running + queued), TaskConcurrencyLimit beyond it
- output.py    tail within the quota, Dropped, size-limited streamed chunks
- schedule.py  pure: next fire of cron (seconds first, timezone) / rate / at; reboot detection
- outbox.py    AgentDatabase, SQLite under state/: report outbox, ledger of started executions
- power.py     the service-manager seam for exit codes 193 (power off) and 194 (reboot)
"""
