"""What a run did: frames in and out, drops, captions and per-stage latency percentiles."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunSummary:
    """What a run did. Counts are exact; latencies (ms) come from the metrics recorder."""

    name: str
    mode: str
    source_fps: float
    frames_in: int = 0
    frames_out: int = 0
    dropped: int = 0
    not_encoded: int = 0
    encoded: int = 0
    pregate_skipped: int = 0
    captions: int = 0
    utterances: int = 0
    reconnects: int = 0
    video_filled: int = 0
    dropped_late: int = 0  # of ``dropped``: paced file frames read too late to deliver
    encode_errors: int = 0  # frames the encoder raised on (skipped, logged; see Inference.process)
    interrupted: bool = False
    wall_s: float = 0.0
    source_s: float = 0.0
    outputs: dict[str, str] = field(default_factory=dict)
    stages: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def output_fps(self) -> float:
        """Output frames per second of source time (what the written video keeps of the source rate)."""
        return self.frames_out / self.source_s if self.source_s > 0 else 0.0

    def stage(self, name: str, key: str = "p50_ms") -> float:
        return self.stages.get(name, {}).get(key, float("nan"))

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items()}
        d["output_fps"] = self.output_fps
        return d

    def lines(self) -> list[str]:
        out = [
            f"{self.name} ({self.mode}): frames in {self.frames_in}, out {self.frames_out}, "
            f"dropped {self.dropped}, encoded {self.encoded}, pre-gate skipped {self.pregate_skipped}, "
            f"not encoded {self.not_encoded}",
            f"captions {self.captions}, utterances {self.utterances}, reconnects {self.reconnects}"
            + (", interrupted" if self.interrupted else ""),
            f"source {self.source_s:.2f} s at {self.source_fps:.2f} fps; wall {self.wall_s:.2f} s; "
            f"output {self.output_fps:.2f} fps of source time",
        ]
        g = self.stages.get("glass_to_caption")
        if g:
            # Offline, frames are decoded as fast as the model goes: there is no glass, only processing.
            what = "decode-to-caption (processing)" if self.mode == "offline" else "glass-to-caption"
            out.append(f"{what} p50 {g['p50_ms']:.0f} ms, p95 {g['p95_ms']:.0f} ms (n={int(g['count'])})")
        s = self.stages.get("glass_to_speech")
        if s:
            out.append(
                f"glass-to-speech p50 {s['p50_ms']:.0f} ms, p95 {s['p95_ms']:.0f} ms (n={int(s['count'])})"
            )
        per = ", ".join(
            f"{k} {v['p50_ms']:.1f}"
            for k, v in self.stages.items()
            if k
            in ("capture", "pregate", "preprocess", "infer", "encode", "decode", "overlay", "write", "wait")
        )
        if per:
            out.append(f"per-stage p50 ms: {per}")
        return out
