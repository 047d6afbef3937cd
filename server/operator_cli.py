"""assist: the operator CLI — configure credentials, call any ECS action, run a script."""

from __future__ import annotations

import argparse
import ast
import base64
import getpass
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import requests
from tqdm import tqdm

from common.atomic import atomic_write_json
from common.cli import add_common_options, print_json, run_cli
from common.errors import AssistError, ConfigError, DownloadError, UsageError
from server import operator_settings
from server.rpc import sign_params

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
ENDPOINT_ENV = "ALIYUN_ASSIST_ENDPOINT"
TERMINAL_RECORD = ("Finished", "Failed", "Stopped")
# aliyuncli plural spellings whose values become Name.1, Name.2, …
LIST_PARAMS = {"InstanceIds": "InstanceId"}


class ApiCallError(AssistError):
    """The API answered with an error code."""

    reference = "api-error"

    def __init__(self, code: str, message: str, status: int) -> None:
        self.code = code
        self.status = status
        self.detail = message  # the server's whole message, e.g. its string to sign
        short, hint = explain_api_error(code, message)
        super().__init__(f"{code}: {short} (HTTP {status})", hint=hint)


# Causes first: what an operator most likely got wrong, for codes where the message alone is long
# or says little. The server's full message stays available with --debug.
_CAUSES = {
    "SignatureDoesNotMatch": (
        "the server computed another signature for this request",
        "the AccessKey secret is wrong (run `assist configure`) or this machine's clock is off "
        "by more than 15 minutes; --debug shows the server's string to sign",
    ),
    "InvalidAccessKeyId.NotFound": (
        "the server knows no such AccessKey",
        "check the AccessKey id (`assist configure`; `assist-server accesskey list`)",
    ),
    "InvalidTimeStamp.Expired": (
        "the request's timestamp is too far from the server's clock",
        "set this machine's clock (NTP), then retry",
    ),
}


def explain_api_error(code: str, message: str) -> tuple[str, str]:
    """A short message and a hint for an API error code (the full message goes to debug logs)."""
    if code in _CAUSES:
        log.debug("%s from the server: %s", code, message)
        return _CAUSES[code]
    return message, "check the parameters"


def config_dir() -> Path:
    """~/.config/aliyun-assist (honours $XDG_CONFIG_HOME)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "aliyun-assist"


def load_config() -> dict[str, str]:
    """The saved credentials, or a ConfigError that says to run `assist configure`."""
    path = config_dir() / CONFIG_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"no configuration at {path}", hint="run `assist configure`") from exc
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}", hint="run `assist configure`") from exc
    for key in ("access_key_id", "access_key_secret", "endpoint"):
        if not data.get(key):
            raise ConfigError(f"{path} lacks {key}", hint="run `assist configure`")
    if os.environ.get(ENDPOINT_ENV):
        data["endpoint"] = os.environ[ENDPOINT_ENV]
    return {k: str(v) for k, v in data.items()}


def normalize_endpoint(endpoint: str) -> str:
    """http(s)://host:port; a bare host:port means plain HTTP (a local server)."""
    endpoint = endpoint.strip().rstrip("/")
    if not endpoint:
        raise UsageError("the endpoint is empty")
    if "://" not in endpoint:
        endpoint = "http://" + endpoint
    if not endpoint.startswith(("http://", "https://")):
        raise UsageError(f"unsupported endpoint {endpoint}", hint="use http:// or https://")
    return endpoint


def cmd_configure(args: argparse.Namespace) -> int:
    """Write credentials, region and endpoint (mode 0600)."""
    existing: dict[str, str] = {}
    path = config_dir() / CONFIG_NAME
    if path.exists():
        try:
            existing = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            existing = {}

    def ask(value: str | None, key: str, prompt: str, secret: bool = False) -> str:
        if value:
            return value
        current = existing.get(key, "")
        if not sys.stdin.isatty():
            if current:
                return current
            raise UsageError(f"--{key.replace('_', '-')} is required when stdin is not a terminal")
        shown = f" [{'****' if secret and current else current}]"
        answer = getpass.getpass(f"{prompt}{shown}: ") if secret else input(f"{prompt}{shown}: ")
        return answer.strip() or current

    config = {
        "access_key_id": ask(args.access_key_id, "access_key_id", "AccessKey ID"),
        "access_key_secret": ask(
            args.access_key_secret, "access_key_secret", "AccessKey Secret", secret=True
        ),
        "region": ask(args.region, "region", "Region") or "cn-hangzhou",
        "endpoint": normalize_endpoint(ask(args.endpoint, "endpoint", "Endpoint")),
    }
    if not config["access_key_id"] or not config["access_key_secret"]:
        raise UsageError("AccessKey ID and secret are required")
    config_dir().mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(config_dir(), 0o700)
    atomic_write_json(path, config, mode=0o600)
    print(f"saved {path}")
    return 0


def parse_action_args(tokens: Sequence[str]) -> dict[str, str]:
    """aliyuncli-style `--Name value…` into API parameters (lists become Name.N)."""
    params: dict[str, str] = {}
    key: str | None = None
    values: dict[str, list[str]] = {}
    order: list[str] = []
    for token in tokens:
        if token.startswith("--") and len(token) > 2:
            name, eq, value = token[2:].partition("=")
            if not name:
                raise UsageError(f"bad option {token!r}")
            key = name
            if key in values:
                raise UsageError(f"--{key} given twice")
            values[key] = [value] if eq else []
            order.append(key)
        elif key is None:
            raise UsageError(f"unexpected argument {token!r}", hint="use --Name value")
        else:
            values[key].append(token)
    for name in order:
        items = values[name]
        if not items:
            raise UsageError(f"--{name} needs a value")
        as_list = _list_value(items)
        if as_list is not None and (len(items) > 1 or name in LIST_PARAMS):
            base = LIST_PARAMS.get(name) or (name[:-1] if name.endswith("s") else name)
            for index, item in enumerate(as_list, 1):
                params[f"{base}.{index}"] = item
        else:
            params[name] = " ".join(items)
    return params


def _list_value(items: list[str]) -> list[str] | None:
    """Several values, or one JSON/Python list literal, as a list of strings."""
    if len(items) > 1:
        return items
    text = items[0].strip()
    if not text.startswith("["):
        return [text]
    for parse in (json.loads, ast.literal_eval):
        try:
            value = parse(text)
        except (ValueError, SyntaxError):
            continue
        if isinstance(value, list):
            return [str(v) for v in value]
    raise UsageError(f"cannot parse list {text!r}", hint='use a JSON list like ["i-1","i-2"]')


def call_api(config: dict[str, str], action: str, params: dict[str, Any]) -> dict[str, Any]:
    """Sign and send one request; return the JSON response or raise ApiCallError."""
    request = {"Action": action, **params}
    if config.get("region"):
        request.setdefault("RegionId", config["region"])
    signed = sign_params(request, config["access_key_id"], config["access_key_secret"], "POST")
    url = normalize_endpoint(config["endpoint"]) + "/"
    try:
        response = requests.post(url, data=signed, timeout=60)
    except requests.RequestException as exc:
        raise DownloadError(f"cannot reach {url}: {exc}", hint="check the endpoint") from exc
    try:
        body = response.json()
    except ValueError as exc:
        raise DownloadError(f"{url} answered HTTP {response.status_code} without JSON") from exc
    if response.status_code >= 400:
        raise ApiCallError(str(body.get("Code")), str(body.get("Message")), response.status_code)
    return dict(body)


def cmd_ecs(args: argparse.Namespace) -> int:
    """`assist ecs ACTION --Param value…`: print the JSON response."""
    params = parse_action_args(args.params)
    config = load_config()
    try:
        print_json(call_api(config, args.action, params))
    except ApiCallError as exc:
        print_json({"Code": exc.code, "Message": exc.detail})
        raise
    return 0


def wait_for_results(
    config: dict[str, str], invoke_id: str, count: int, timeout: float, interval: float
) -> list[dict[str, Any]]:
    """Poll DescribeInvocationResults until every instance is finished (progress on a TTY)."""
    deadline = time.monotonic() + timeout
    results: list[dict[str, Any]] = []
    bar = tqdm(total=count, unit="instance", disable=not sys.stderr.isatty(), file=sys.stderr)
    try:
        while True:
            results = fetch_results(config, invoke_id)
            finished = sum(r["InvokeRecordStatus"] in TERMINAL_RECORD for r in results)
            bar.update(finished - bar.n)
            if results and finished >= len(results):
                return results
            if time.monotonic() > deadline:
                raise AssistError(
                    f"{count - finished} instance(s) still running after {timeout:.0f} s",
                    hint=f"check later: assist ecs DescribeInvocationResults --InvokeId {invoke_id}",
                )
            time.sleep(interval)
    finally:
        bar.close()


def fetch_results(config: dict[str, str], invoke_id: str) -> list[dict[str, Any]]:
    """Every per-instance result of an invocation (all pages)."""
    results: list[dict[str, Any]] = []
    page = 1
    while True:
        body = call_api(
            config,
            "DescribeInvocationResults",
            {"InvokeId": invoke_id, "PageSize": 50, "PageNumber": page},
        )
        inv = body["Invocation"]
        results.extend(inv["InvocationResults"]["InvocationResult"])
        if len(results) >= inv["TotalCount"] or not inv["InvocationResults"]["InvocationResult"]:
            return results
        page += 1


def format_table(results: list[dict[str, Any]]) -> str:
    """A plain text table: instance, status, exit code, first line of output."""
    rows = [("INSTANCE", "STATUS", "EXIT", "OUTPUT")]
    for r in results:
        text = base64.b64decode(r.get("Output") or "").decode("utf-8", "replace")
        first = text.strip().splitlines()[0] if text.strip() else ""
        rows.append((r["InstanceId"], r["InvocationStatus"], str(r["ExitCode"]), first[:60]))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + row[3]
        for row in rows
    )


def cmd_run(args: argparse.Namespace) -> int:
    """RunCommand, then optionally wait and print a table of results."""
    config = load_config()
    if args.endpoint:
        config["endpoint"] = args.endpoint
    params: dict[str, Any] = {
        "Type": args.type,
        "CommandContent": args.command,
        "ContentEncoding": "PlainText",
        "Timeout": args.timeout,
        "Name": args.name,
    }
    for index, instance in enumerate(args.instance_ids, 1):
        params[f"InstanceId.{index}"] = instance
    body = call_api(config, "RunCommand", params)
    invoke_id = body["InvokeId"]
    if not args.wait:
        if args.json:
            print_json(body)
        else:
            print(f"InvokeId: {invoke_id}\nCommandId: {body['CommandId']}")
        return 0
    results = wait_for_results(
        config, invoke_id, len(args.instance_ids), args.wait_timeout, args.poll_interval
    )
    if args.json:
        print_json({"InvokeId": invoke_id, "Results": results})
    else:
        print(format_table(results))
    return 0 if all(r["InvocationStatus"] == "Success" for r in results) else 1


FILE_DONE = ("Success", "Failed", "PartialFailed")
MAX_FILE = 32 * 1024  # bytes SendFile takes


def file_content(args: argparse.Namespace) -> tuple[str, bytes]:
    """(name, bytes) of the file to send: the local FILE or --content."""
    if (args.file is None) == (args.content is None):
        raise UsageError("give a local FILE or --content TEXT (one of them)")
    if args.content is not None:
        if not args.name:
            raise UsageError("--name is required with --content")
        data = str(args.content).encode("utf-8")
    else:
        path = Path(args.file)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
    if len(data) > MAX_FILE:
        raise UsageError(
            f"the file is {len(data)} bytes; SendFile takes at most {MAX_FILE}",
            hint="send a script that downloads it instead (assist run)",
        )
    return args.name or Path(args.file).name, data


def wait_for_file(
    config: dict[str, str], invoke_id: str, timeout: float, interval: float
) -> dict[str, Any]:
    """Poll DescribeSendFileResults until the file task is done; its Invocation."""
    deadline = time.monotonic() + timeout
    while True:
        body = call_api(config, "DescribeSendFileResults", {"InvokeId": invoke_id})
        items = body["Invocations"]["Invocation"]
        if items and items[0]["InvocationStatus"] in FILE_DONE:
            return dict(items[0])
        if time.monotonic() > deadline:
            raise AssistError(
                f"the file is still being sent after {timeout:.0f} s",
                hint=f"check later: assist ecs DescribeSendFileResults --InvokeId {invoke_id}",
            )
        time.sleep(interval)


def format_file_table(results: list[dict[str, Any]]) -> str:
    """INSTANCE, STATUS, ERROR (code: info) per instance."""
    rows = [("INSTANCE", "STATUS", "ERROR")]
    for r in results:
        error = f"{r['ErrorCode']}: {r['ErrorInfo']}" if r.get("ErrorCode") else ""
        rows.append((r["InstanceId"], r["InvocationStatus"], error[:100]))
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    return "\n".join(
        f"{row[0].ljust(widths[0])}  {row[1].ljust(widths[1])}  {row[2]}".rstrip() for row in rows
    )


def cmd_send_file(args: argparse.Namespace) -> int:
    """SendFile, then (unless --no-wait) wait and print each instance's result."""
    name, data = file_content(args)
    config = load_config()
    if args.endpoint:
        config["endpoint"] = args.endpoint
    params: dict[str, Any] = {
        "Name": name,
        "Content": base64.b64encode(data).decode("ascii"),
        "ContentType": "Base64",
        "TargetDir": args.target_dir,
        "FileMode": args.mode,
        "FileOwner": args.owner,
        "FileGroup": args.group,
        "Overwrite": "true" if args.overwrite else "false",
        "Timeout": args.timeout,
    }
    if args.description:
        params["Description"] = args.description
    for index, instance in enumerate(args.instance, 1):
        params[f"InstanceId.{index}"] = instance
    invoke_id = call_api(config, "SendFile", params)["InvokeId"]
    if args.no_wait:
        if args.json:
            print_json({"InvokeId": invoke_id})
        else:
            print(f"InvokeId: {invoke_id}")
        return 0
    item = wait_for_file(config, invoke_id, args.wait_timeout, args.poll_interval)
    results = item["InvokeInstances"]["InvokeInstance"]
    if args.json:
        print_json({"InvokeId": invoke_id, "Results": results})
    else:
        print(format_file_table(results))
    return 0 if item["InvocationStatus"] == "Success" else 1


# One example per command and subcommand, shown at the end of its --help (docs/cli.md).
EXAMPLES = {
    "": "assist run --instance-ids i-1 i-2 --command 'echo 123' --wait",
    "configure": "assist configure --access-key-id LTAI… --access-key-secret … --region cn-hangzhou --endpoint https://assist.example:8443",
    "ecs": "assist ecs DescribeInvocationResults --InstanceId i-1 --InvokeId t-…",
    "run": "assist run --instance-ids i-1 i-2 --command 'echo 123' --wait",
    "send-file": "assist send-file app.conf --instance i-1 --instance i-2 --target-dir /etc/app --mode 0640 --owner nobody",
    **operator_settings.EXAMPLES,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="assist", description="Cloud Assistant operator CLI")
    add_common_options(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    conf = sub.add_parser("configure", help="save AccessKey, region and endpoint")
    add_common_options(conf)
    conf.add_argument("--access-key-id", help="AccessKeyId from assist-server accesskey create")
    conf.add_argument("--access-key-secret", help="its secret (prompted for when left out)")
    conf.add_argument("--region", help="region id sent with every call, e.g. cn-hangzhou")
    conf.add_argument("--endpoint", help="e.g. http://127.0.0.1:8080")

    ecs = sub.add_parser("ecs", help="call an ECS action: assist ecs ACTION --Param value…")
    ecs.add_argument("action", help="the API action, e.g. CreateCommand")
    ecs.add_argument(
        "params", nargs=argparse.REMAINDER, help="--Name value pairs (list values after one name)"
    )

    run = sub.add_parser("run", help="run a script on instances and show the results")
    add_common_options(run)
    run.add_argument(
        "--instance-ids", nargs="+", required=True, metavar="ID", help="instances to run on"
    )
    run.add_argument("--command", required=True, help="the script text")
    run.add_argument(
        "--type",
        default="RunShellScript",
        choices=["RunShellScript", "RunBatScript", "RunPowerShellScript"],
        help="the interpreter",
    )
    run.add_argument("--timeout", type=int, default=60, help="seconds")
    run.add_argument("--name", default="assist-run", help="name of the command created")
    run.add_argument("--wait", action="store_true", help="wait and print a table of results")
    run.add_argument("--wait-timeout", type=float, default=600.0, help="seconds")
    run.add_argument("--poll-interval", type=float, default=1.0, help="seconds")
    run.add_argument("--endpoint", default="", help="API endpoint (default: the configured one)")
    run.add_argument("--json", action="store_true")
    add_send_file_parser(sub)
    operator_settings.add_parser(sub)
    return parser


def add_send_file_parser(sub: Any) -> None:
    send = sub.add_parser(
        "send-file", help="put a file (at most 32 KB) on instances and show the results"
    )
    add_common_options(send)
    send.add_argument("file", nargs="?", help="the local file to send (or --content)")
    send.add_argument("--content", help="the file's text, instead of a local FILE")
    send.add_argument(
        "--instance", action="append", required=True, metavar="ID", help="repeat for several"
    )
    send.add_argument("--target-dir", required=True, help="absolute directory on the instance")
    send.add_argument("--name", default="", help="file name there (default: FILE's name)")
    send.add_argument("--description", default="", help="Description of the file task")
    send.add_argument("--mode", default="0644", help="octal, as chmod takes it")
    send.add_argument("--owner", default="root", help="user name on the instance")
    send.add_argument("--group", default="root", help="group name on the instance")
    send.add_argument("--overwrite", action="store_true", help="replace an existing file")
    send.add_argument("--timeout", type=int, default=60, help="seconds to deliver it")
    send.add_argument("--no-wait", action="store_true", help="print the InvokeId and return")
    send.add_argument("--wait-timeout", type=float, default=600.0, help="seconds")
    send.add_argument("--poll-interval", type=float, default=1.0, help="seconds")
    send.add_argument("--endpoint", default="", help="API endpoint (default: the configured one)")
    send.add_argument("--json", action="store_true", help="print the results as JSON")


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "configure":
        return cmd_configure(args)
    if args.command == "ecs":
        return cmd_ecs(args)
    if args.command == "send-file":
        return cmd_send_file(args)
    if args.command == "settings":
        config = load_config()
        return operator_settings.cmd_settings(args, lambda a, p: call_api(config, a, p))
    return cmd_run(args)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("assist", build_parser(), dispatch, argv, examples=EXAMPLES)


if __name__ == "__main__":
    sys.exit(main(None))
