"""Typed configuration: defaults, loading config.yaml, ``--set key.sub=value`` overrides and validation.

Every knob is a dataclass field. Its metadata says what is allowed (``choices``, ``min``, ``max``) and its
``doc`` is the comment written next to it in config.yaml. A bad value raises :class:`ConfigError` with one
line naming the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from drivecap.config_backends import OpenVINOConfig, TensorRTConfig
from drivecap.config_captions import HoldConfig
from drivecap.config_recording import RecordConfig, VideoConfig
from drivecap.errors import ConfigError
from drivecap.knobs import knob

T = TypeVar("T")


@dataclass
class PathsConfig:
    engines_dir: str = knob(
        "engines",
        "Built encoder ONNX / INT8 / TensorRT files; relative to the config file, or with no config file to "
        "the artifacts home (a source checkout's own folder, else $DRIVECAP_HOME or ~/.cache/drivecap)",
    )
    calibration_dir: str = knob(
        "calibration", "INT8 calibration manifests and caches (relative like paths.engines_dir)"
    )
    home: str = knob("", "Asset cache; empty = $DRIVECAP_HOME, else ~/.cache/drivecap")


@dataclass
class EncoderConfig:
    backend: str = knob(
        "auto",
        "Inference backend: auto = TensorRT when a GPU and tensorrt are present, else OpenVINO when "
        "installed, else ONNX Runtime",
        choices=("auto", "onnxruntime", "openvino", "tensorrt"),
    )
    precision: str = knob(
        "int8",
        "fp32, fp16 (TensorRT only) or int8 (static QDQ from `drivecap calibrate`)",
        choices=("fp32", "fp16", "int8"),
    )
    input_height: int = knob(224, "Encoder input height in pixels (multiple of 32)", min=32, max=1024)
    input_width: int = knob(224, "Encoder input width in pixels (multiple of 32)", min=32, max=2048)
    threads: int = knob(0, "CPU inference threads (ONNX Runtime, OpenVINO); 0 = one per core", min=0, max=256)
    mirror_batch: str = knob(
        "auto",
        "Mirror view with every frame captioned (gate off): frame + mirror in one batch-2 call (on), two calls "
        "(off), auto = what measured faster for the backend (docs/cpu-backends.md); with the gate on the mirror "
        "is always one call of its own, made only when a caption is",
        choices=("auto", "on", "off"),
    )
    onnx: str = knob("", "Encoder ONNX path; empty = the exported default in paths.engines_dir")
    delta: str = knob(
        "",
        "Fine-tuned layer delta (.npz) that `drivecap encoder export` merges into vgg16_conv5.delta-<sha12>.onnx (that file is then the encoder: re-export and re-calibrate after changing it); empty = none",
    )
    warmup_runs: int = knob(2, "Inference runs before anything is timed", min=0, max=100)


@dataclass
class CalibrationConfig:
    frames: int = knob(150, "Calibration frames sampled evenly from the training drives", min=8, max=5000)
    seed: int = knob(0, "Seed for the frame sampler", min=0)
    method: str = knob("minmax", "Activation range estimator", choices=("minmax", "entropy", "percentile"))
    percentile: float = knob(
        99.999,
        "With method percentile: the share (%) of activation values inside the range",
        min=90.0,
        max=100.0,
    )
    clips: list[str] = knob(
        ["project_video02", "project_video03", "challenge02", "challenge03", "street"],
        "Training clips to sample from (never a held-out clip)",
    )
    float_layers: list[str] = knob(
        [], "Conv layers left in fp32 in the INT8 model (mixed precision), e.g. [block5_conv3]"
    )


@dataclass
class GateConfig:
    enabled: bool = knob(True, "false = caption every encoded frame (for comparison)")
    thumb_size: int = knob(32, "Side of the grey thumbnail the pixel pre-gate compares", min=8, max=256)
    pixel_threshold: float = knob(
        0.0025, "Pre-gate: mean abs thumbnail diff (0-1) below which the encoder is skipped", min=0.0, max=1.0
    )
    open_threshold: float = knob(
        0.12,
        "Semantic gate opens when cosine distance to the last captioned feature exceeds this",
        min=0.0,
        max=2.0,
    )
    close_threshold: float = knob(
        0.06,
        "Hysteresis: a pending change (waiting for min_interval_s) is dropped if distance falls below this",
        min=0.0,
        max=2.0,
    )
    min_interval_s: float = knob(1.0, "Never caption more often than this (seconds)", min=0.0, max=600.0)
    max_age_s: float = knob(
        8.0, "Re-caption after this long even if the scene did not change (seconds)", min=0.0
    )


@dataclass
class DecoderConfig:
    bundle: str = knob("default", "Model bundle folder; 'default' = the bundle shipped in the package")
    beam_width: int = knob(1, "1 = greedy decoding, >1 = beam search", min=1, max=16)
    max_tokens: int = knob(16, "Longest caption in tokens", min=2, max=64)
    mirror_view: bool = knob(
        True,
        "When a caption is made, also encode the mirrored frame and decode both views together, so a "
        "mirrored road always gets the mirrored caption (one extra encode per caption, not per frame)",
    )


@dataclass
class CaptureConfig:
    reconnect_initial_s: float = knob(
        0.5, "First wait before reopening a dropped live source", min=0.0, max=60.0
    )
    reconnect_max_s: float = knob(8.0, "Longest wait between reopen attempts (exponential backoff)", min=0.0)
    read_timeout_s: float = knob(
        5.0, "A live source silent this long is treated as dropped", min=0.1, max=600.0
    )
    loop: bool = knob(False, "Start a file again at its end")
    folder_fps: float = knob(10.0, "Frame rate given to an image-folder source", min=0.1, max=1000.0)


@dataclass
class ReplayConfig:
    mode: str = knob(
        "offline",
        "offline = every Nth frame, deterministic; realtime = paced like a live camera",
        choices=("offline", "realtime"),
    )
    stride: int = knob(
        1, "offline: encode every Nth frame (the video still gets every frame)", min=1, max=1000
    )


@dataclass
class OverlayConfig:
    hud: bool = knob(True, "Draw fps, encoder/decoder ms and gate state")
    font_scale: float = knob(0.0, "Caption font scale; 0 = from the frame height", min=0.0, max=10.0)
    max_chars_per_line: int = knob(42, "Word-wrap width of the caption box", min=8, max=200)
    fade_s: float = knob(0.3, "Cross-fade between captions (seconds)", min=0.0, max=5.0)


@dataclass
class SpeechConfig:
    backend: str = knob(
        "auto",
        "auto = by job: `run` speaks (pyttsx3 over espeak-ng, else the espeak-ng command line; one warning and "
        "silence where nothing can play), `replay`, `bench` and `fleet` stay silent; or pyttsx3, espeak, "
        "wav (one file per utterance), none",
        choices=("auto", "pyttsx3", "espeak", "wav", "none"),
    )
    rate_wpm: int = knob(175, "Speaking rate (words per minute)", min=60, max=500)
    repeat_window_s: float = knob(10.0, "Do not speak the same caption again within this time", min=0.0)
    min_gap_s: float = knob(1.5, "Least time between the start of two utterances", min=0.0, max=60.0)


@dataclass
class OutputConfig:
    video: bool = knob(True, "Write <name>.mp4 (see video.codec) with every source frame captioned")
    srt: bool = knob(True, "Write <name>.srt subtitles")
    vtt: bool = knob(True, "Write <name>.vtt subtitles")
    events: bool = knob(True, "Write <name>.jsonl (gate decisions, captions, speech)")
    thumbnails: bool = knob(
        True, "Write <name>.thumbs/NNNNN.jpg, one 320-px JPEG per caption for search hits (~1 ms a caption)"
    )
    cue_max_s: float = knob(
        4.0,
        "A caption shown longer is written to .srt/.vtt in cues of this length: what a crash may lose of them",
        min=0.5,
        max=3600.0,
    )
    window: bool = knob(True, "Show a window when a display exists (never on a headless machine)")


@dataclass
class Config:
    paths: PathsConfig = field(default_factory=PathsConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    tensorrt: TensorRTConfig = field(default_factory=TensorRTConfig)
    openvino: OpenVINOConfig = field(default_factory=OpenVINOConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    hold: HoldConfig = field(default_factory=HoldConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    overlay: OverlayConfig = field(default_factory=OverlayConfig)
    speech: SpeechConfig = field(default_factory=SpeechConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    record: RecordConfig = field(default_factory=RecordConfig)
    # Folder that relative paths are resolved against: the config file's folder, or the working directory.
    base_dir: Path = field(default_factory=Path.cwd, metadata={"internal": True})
    # The config file that was loaded (None: built-in defaults and --set only).
    config_file: Path | None = field(default=None, metadata={"internal": True})

    def resolve(self, path: str | os.PathLike[str]) -> Path:
        """A config path made absolute against the config file's folder (``~`` expanded)."""
        p = Path(os.path.expanduser(str(path)))
        return p if p.is_absolute() else (self.base_dir / p)

    def resolve_artifact(self, path: str | os.PathLike[str]) -> Path:
        """A built-artifact folder: against the config file's folder, else the artifacts home (never the cwd)."""
        p = Path(os.path.expanduser(str(path)))
        if p.is_absolute():
            return p
        return (self.base_dir if self.config_file is not None else artifacts_home(self.paths.home)) / p

    @property
    def engines_dir(self) -> Path:
        return self.resolve_artifact(self.paths.engines_dir)

    @property
    def calibration_dir(self) -> Path:
        return self.resolve_artifact(self.paths.calibration_dir)

    def validate(self) -> None:
        """Checks that involve more than one key."""
        if self.gate.close_threshold > self.gate.open_threshold:
            raise ConfigError(
                f"gate.close_threshold={self.gate.close_threshold} is above gate.open_threshold="
                f"{self.gate.open_threshold}: the gate could never re-arm; make it <= open_threshold"
            )
        if self.capture.reconnect_max_s < self.capture.reconnect_initial_s:
            raise ConfigError(
                f"capture.reconnect_max_s={self.capture.reconnect_max_s} is below capture.reconnect_initial_s="
                f"{self.capture.reconnect_initial_s}; make it >= the initial wait"
            )
        for key, val in (
            ("encoder.input_height", self.encoder.input_height),
            ("encoder.input_width", self.encoder.input_width),
        ):
            if val % 32:
                raise ConfigError(
                    f"{key}={val} is not a multiple of 32 (VGG16 pools 5 times); try {val // 32 * 32 or 32}"
                )
        if self.encoder.precision == "fp16" and self.encoder.backend == "onnxruntime":
            raise ConfigError(
                "encoder.precision=fp16 needs encoder.backend=tensorrt; with onnxruntime use fp32 or int8"
            )
        from drivecap.assets import HELD_OUT_CLIPS, known_clip_names

        for clip in self.calibration.clips:
            if clip in HELD_OUT_CLIPS:
                raise ConfigError(
                    f"calibration.clips contains {clip!r}, a held-out clip: calibrate on training drives only"
                )
            if clip not in known_clip_names():
                raise ConfigError(
                    f"calibration.clips contains unknown clip {clip!r}; known: {', '.join(known_clip_names())}"
                )


# --------------------------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _coerce(key: str, value: Any, tp: Any, meta: typing.Mapping[str, Any]) -> Any:
    """Checks one value against its field type and limits; returns it in the field's type."""
    origin = typing.get_origin(tp)
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}={value!r} is not allowed: expected {_type_name(tp)}")
        return [_coerce(f"{key}[{i}]", v, inner, {}) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} is not allowed: expected true or false")
        out: Any = value
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r} is not allowed: expected an integer")
        out = value
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}={value!r} is not allowed: expected a number")
        out = float(value)
        if out != out or out in (float("inf"), float("-inf")):
            raise ConfigError(f"{key}={value!r} is not allowed: expected a finite number")
    elif tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r} is not allowed: expected a string")
        out = value
    else:  # pragma: no cover - only the types above are used
        raise TypeError(tp)
    choices = meta.get("choices")
    if choices and out not in choices:
        raise ConfigError(f"{key}={value!r} is not allowed: choose one of {', '.join(map(str, choices))}")
    lo, hi = meta.get("min"), meta.get("max")
    if (lo is not None and out < lo) or (hi is not None and out > hi):
        rng = (
            f"between {lo} and {hi}"
            if lo is not None and hi is not None
            else (f"at least {lo}" if lo is not None else f"at most {hi}")
        )
        raise ConfigError(f"{key}={value!r} is out of range: must be {rng}")
    return out


def _section_fields(cls: type) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}


def _apply(obj: Any, data: Any, prefix: str) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping of keys, got {data!r}")
    fields = _section_fields(type(obj))
    hints = typing.get_type_hints(type(obj))
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in fields:
            raise ConfigError(f"unknown key {key!r}; allowed here: {', '.join(fields)}")
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            _apply(getattr(obj, name), value, f"{key}.")
        else:
            setattr(obj, name, _coerce(key, value, tp, fields[name].metadata))


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r} is not KEY=VALUE (for example --set gate.open_threshold=0.1)")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def load_config(path: str | os.PathLike[str] | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Defaults, then the YAML file (if any), then ``key.sub=value`` overrides; validated."""
    cfg = Config()
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"config file {p} does not exist; pass an existing file to --config") from None
        except OSError as exc:
            raise ConfigError(f"config file {p} cannot be read ({exc.strerror})") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"config file {p} is not valid YAML{where}; fix the syntax") from None
        cfg.base_dir = p.resolve().parent
        cfg.config_file = p.resolve()
        if data is not None:
            try:
                _apply(cfg, data, "")
            except ConfigError as exc:
                raise ConfigError(f"{p}: {exc}") from None
    for item in overrides:
        parts, value = _parse_override(item)
        nested: Any = value
        for part in reversed(parts):
            nested = {part: nested}
        _apply(cfg, nested, "")
    cfg.validate()
    return cfg


def artifacts_home(configured_home: str = "") -> Path:
    """Where built engines and calibration live when no config file says otherwise.

    A source checkout (the package sits beside the repository's pyproject.toml and engines/) keeps them in the
    repository, as `bash scripts/setup.sh` builds them; an installed package keeps them in the asset cache
    ($DRIVECAP_HOME, else ~/.cache/drivecap). Never the working directory: drivecap must work from any folder.
    """
    repo = Path(__file__).resolve().parent.parent
    if (repo / "pyproject.toml").is_file() and (repo / "engines").is_dir():
        return repo
    from drivecap.assets import drivecap_home

    return drivecap_home(configured_home)


def default_config_path() -> Path | None:
    """./config.yaml when it exists (the repository's documented config), else None (built-in defaults)."""
    p = Path.cwd() / "config.yaml"
    return p if p.is_file() else None


def to_dict(cfg: Any) -> dict[str, Any]:
    """The configuration as plain data (for event logs and model cards)."""
    out: dict[str, Any] = {}
    for name, f in _section_fields(type(cfg)).items():
        val = getattr(cfg, name)
        out[name] = (
            to_dict(val) if dataclasses.is_dataclass(val) else (list(val) if isinstance(val, list) else val)
        )
        del f
    return out


def render_yaml(cfg: Config | None = None) -> str:
    """config.yaml text: every knob with its default and a comment (used to write and to check config.yaml)."""
    cfg = cfg or Config()
    lines = [
        "# drivecap configuration. Every knob, with its default. Override any of them on the command line",
        "# with --set section.key=value, or point --config at a copy of this file.",
        "# Relative paths are resolved against the folder of this file.",
    ]
    for sname, sfield in _section_fields(Config).items():
        section = getattr(cfg, sname)
        lines.append("")
        lines.append(f"{sname}:")
        for name, f in _section_fields(type(section)).items():
            val = getattr(section, name)
            meta = f.metadata
            doc = meta.get("doc", "")
            allowed = ""
            if meta.get("choices"):
                allowed = f" [{' | '.join(map(str, meta['choices']))}]"
            elif meta.get("min") is not None or meta.get("max") is not None:
                allowed = f" [{meta.get('min', '')}..{'' if meta.get('max') is None else meta['max']}]"
            dumped = yaml.safe_dump(val, default_flow_style=True).strip()
            if dumped.endswith("\n..."):
                dumped = dumped[: -len("\n...")]
            dumped = dumped.removesuffix("...").strip()
            lines.append(f"  {name}: {dumped}  # {doc}{allowed}")
        del sfield
    return "\n".join(lines) + "\n"
