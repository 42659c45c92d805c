"""Prometheus metrics of ``r2vcal serve`` (text format, no dependency)."""

from __future__ import annotations

import threading

from r2vcal.serve.openai import header_value

__all__: list[str] = []

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_HELP = {
    "r2vcal_requests_total": ("counter", "Chat completion requests by status."),
    "r2vcal_escalations_total": ("counter", "Steps the router sent to the LLM."),
    "r2vcal_fallbacks_total": ("counter", "Steps answered by the other model."),
    "r2vcal_upstream_errors_total": ("counter", "Failed upstream attempts."),
    "r2vcal_tokens_total": ("counter", "Tokens reported by the upstreams."),
    "r2vcal_cost_total": ("counter", "Cost units spent, by actor and model."),
    "r2vcal_missing_logprobs_total": (
        "counter",
        "SLM answers without token log-probs (scored as certain).",
    ),
    "r2vcal_replayed_total": ("counter", "Client retries answered from the cache."),
    "r2vcal_client_disconnects_total": (
        "counter",
        "Requests whose client left before the answer (upstream calls cancelled).",
    ),
    "r2vcal_request_duration_seconds": ("histogram", "Request latency."),
    "r2vcal_proxy_overhead_seconds": (
        "histogram",
        "Request latency minus the time spent waiting for upstreams.",
    ),
}


def _label(value: str) -> str:
    text = header_value(value, 120)
    return text.replace("\\", "\\\\").replace('"', '\\"')


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.hists: dict[str, list[float]] = {}

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self.counters[key] = self.counters.get(key, 0.0) + value

    def observe(self, name: str, seconds: float) -> None:
        with self._lock:
            h = self.hists.setdefault(name, [0.0] * (len(_BUCKETS) + 2))
            for i, b in enumerate(_BUCKETS):
                if seconds <= b:
                    h[i] += 1
            h[-2] += 1  # count (+Inf)
            h[-1] += seconds

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            names = sorted({k[0] for k in self.counters} | set(self.hists))
            for name in names:
                kind, text = _HELP.get(name, ("untyped", name))
                lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
                if name in self.hists:
                    h = self.hists[name]
                    for b, c in zip(_BUCKETS, h):
                        lines.append(f'{name}_bucket{{le="{b:g}"}} {c:g}')
                    lines.append(f'{name}_bucket{{le="+Inf"}} {h[-2]:g}')
                    lines.append(f"{name}_sum {h[-1]:.6f}")
                    lines.append(f"{name}_count {h[-2]:g}")
                    continue
                for (n, labels), v in sorted(self.counters.items()):
                    if n == name:
                        lab = ",".join(f'{k}="{_label(val)}"' for k, val in labels)
                        lines.append(f"{name}{{{lab}}} {v:g}" if lab else f"{n} {v:g}")
        return "\n".join(lines) + "\n"
