"""Fault injection for tests: make a named job or endpoint fail, throttle calls, slow jobs down.

Faults are set through the endpoint's control path (``POST /_local/faults``, see
``local_stack/README.md``) or directly on ``Runtime.faults`` in-process.
"""

from __future__ import annotations

import fnmatch
import threading
from dataclasses import dataclass, field

from local_stack.sagemaker_runtime.api import SageMakerError


@dataclass
class FaultInjector:
    """The faults currently armed. All methods are thread-safe."""

    # resource-name glob -> FailureReason to report
    failures: dict[str, str] = field(default_factory=dict)
    # action name (or "*") -> number of calls still to answer with ThrottlingException
    throttles: dict[str, int] = field(default_factory=dict)
    # resource-name glob -> extra seconds a job takes before it runs
    delays: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def configure(self, spec: dict) -> None:
        """Arm faults from a JSON spec: ``{"fail": {glob: reason}, "throttle": {action: n},
        "delay": {glob: seconds}}``; keys add to what is armed."""
        with self._lock:
            self.failures.update(spec.get("fail", {}))
            self.throttles.update({k: int(v) for k, v in spec.get("throttle", {}).items()})
            self.delays.update({k: float(v) for k, v in spec.get("delay", {}).items()})

    def clear(self) -> None:
        """Disarm every fault."""
        with self._lock:
            self.failures.clear()
            self.throttles.clear()
            self.delays.clear()

    def snapshot(self) -> dict:
        """What is armed, in the shape ``configure`` takes."""
        with self._lock:
            return {
                "fail": dict(self.failures),
                "throttle": dict(self.throttles),
                "delay": dict(self.delays),
            }

    def before_call(self, action_name: str) -> None:
        """Raise ``ThrottlingException`` while a throttle for this action (or ``*``) has calls left."""
        with self._lock:
            for key in (action_name, "*"):
                left = self.throttles.get(key, 0)
                if left > 0:
                    self.throttles[key] = left - 1
                    raise SageMakerError("ThrottlingException", "Rate exceeded", status=400)

    def failure_for(self, resource_name: str) -> str | None:
        """The injected FailureReason for a job or endpoint name, if one is armed."""
        with self._lock:
            for pattern, reason in self.failures.items():
                if fnmatch.fnmatchcase(resource_name, pattern):
                    return reason
        return None

    def delay_for(self, resource_name: str) -> float:
        """Extra seconds to sleep before running the named job."""
        with self._lock:
            return sum(s for p, s in self.delays.items() if fnmatch.fnmatchcase(resource_name, p))
