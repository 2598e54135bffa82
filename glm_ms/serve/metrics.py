"""The engine's counters and latency histograms, and their Prometheus text exposition (no client library needed)."""
from __future__ import annotations

import threading
from collections.abc import Sequence

# Seconds. Time to first token includes the queue wait and the prefill; per-token latency is one decode step.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Histogram:
    """Cumulative-bucket histogram of observed values, as Prometheus exposes one."""

    def __init__(self, buckets: Sequence[float]):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self.total = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        """Add one observation."""
        with self._lock:
            self.total += value
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    self.counts[i] += 1
                    break
            else:
                self.counts[-1] += 1

    @property
    def count(self) -> int:
        """Observations so far."""
        return sum(self.counts)

    def lines(self, name: str, help_text: str) -> list[str]:
        """Its Prometheus text lines."""
        with self._lock:
            counts, total = list(self.counts), self.total
        out = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        running = 0
        for bound, n in zip(self.buckets + (float("inf"),), counts):
            running += n
            label = "+Inf" if bound == float("inf") else repr(bound)
            out.append(f'{name}_bucket{{le="{label}"}} {running}')
        out += [f"{name}_sum {total}", f"{name}_count {running}"]
        return out


class EngineMetrics:
    """What the engine counts while it serves (written by its thread, read by /metrics)."""

    def __init__(self, slots: int):
        self.slots = slots
        self.generated_tokens = 0
        self.rejected = 0
        self.finished: dict[str, int] = {}  # reason → requests
        self.time_to_first_token = Histogram(TTFT_BUCKETS)
        self.time_per_token = Histogram(TOKEN_BUCKETS)

    def exposition(self, queued: int, active: int) -> str:
        """The Prometheus text page, with the queue length and busy rows given now."""
        lines = [
            "# HELP glm_ms_queue_length Requests waiting for a free row.", "# TYPE glm_ms_queue_length gauge",
            f"glm_ms_queue_length {queued}",
            "# HELP glm_ms_active_slots Rows decoding a request now.", "# TYPE glm_ms_active_slots gauge",
            f"glm_ms_active_slots {active}",
            "# HELP glm_ms_slots Rows of the batched cache.", "# TYPE glm_ms_slots gauge",
            f"glm_ms_slots {self.slots}",
            "# HELP glm_ms_generated_tokens_total Tokens generated.", "# TYPE glm_ms_generated_tokens_total counter",
            f"glm_ms_generated_tokens_total {self.generated_tokens}",
            "# HELP glm_ms_rejected_requests_total Requests refused because the queue was full.",
            "# TYPE glm_ms_rejected_requests_total counter",
            f"glm_ms_rejected_requests_total {self.rejected}",
            "# HELP glm_ms_finished_requests_total Requests ended, by reason.",
            "# TYPE glm_ms_finished_requests_total counter",
        ]
        lines += [f'glm_ms_finished_requests_total{{reason="{reason}"}} {n}'
                  for reason, n in sorted(self.finished.items())]
        lines += self.time_to_first_token.lines("glm_ms_time_to_first_token_seconds",
                                                "Submit to first token (queue wait and prefill).")
        lines += self.time_per_token.lines("glm_ms_time_per_output_token_seconds",
                                           "Time between two tokens of one request.")
        return "\n".join(lines) + "\n"
