"""An Ansible stdout callback for the tests: one JSON object on stdout at the end of the run.

ansible-core ships no JSON callback (ansible.posix.json is in a collection): this one is small.
Each task result is {"task", "host", "status" (ok|changed|failed|skipped|unreachable), "result"}
with the module's return values (msg, diff, moves, stderr, ...); "stats" is the recap per host.
"""

from __future__ import annotations

import json
from typing import Any

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: pcipassd_json
type: stdout
short_description: the run as one JSON object (pcipassd's tests)
description: the run as one JSON object (pcipassd's tests)
"""


class CallbackModule(CallbackBase):  # type: ignore[misc]  # ansible-core is untyped
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "pcipassd_json"

    def __init__(self) -> None:
        super().__init__()
        self.tasks: list[dict[str, Any]] = []

    def _add(self, result: Any, status: str) -> None:
        data = dict(result._result)
        if status == "ok" and data.get("changed"):
            status = "changed"
        self.tasks.append({"task": result._task.get_name(), "host": result._host.get_name(),
                           "status": status, "result": data})

    def v2_runner_on_ok(self, result: Any) -> None:
        self._add(result, "ok")

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._add(result, "ignored" if ignore_errors else "failed")

    def v2_runner_on_skipped(self, result: Any) -> None:
        self._add(result, "skipped")

    def v2_runner_on_unreachable(self, result: Any) -> None:
        self._add(result, "unreachable")

    def v2_playbook_on_stats(self, stats: Any) -> None:
        recap = {host: stats.summarize(host) for host in sorted(stats.processed)}
        self._display.display(json.dumps({"tasks": self.tasks, "stats": recap}, default=str))
