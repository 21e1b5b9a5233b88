"""Speech backends: pyttsx3, the espeak-ng command line, WAV files (for recordings and tests), none."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class SpeechUnavailable(RuntimeError):
    """The TTS backend cannot speak on this machine (internal: turned into one warning)."""


def estimate_duration_s(text: str, rate_wpm: int) -> float:
    """Roughly how long speaking ``text`` takes (words at ``rate_wpm`` plus a short lead-in)."""
    return 0.2 + len(text.split()) * 60.0 / max(1, rate_wpm)


# --------------------------------------------------------------------------------------------- backends


class Backend:
    name = "none"

    def open(self) -> None:
        """Called in the worker thread before the first utterance. Raises SpeechUnavailable."""

    def speak(self, text: str, wav_path: Path | None, on_start: Callable[[], None]) -> None:
        """Speaks (or renders) ``text``; calls ``on_start`` when sound starts. Raises SpeechUnavailable."""
        on_start()

    def close(self) -> None:
        pass


class Pyttsx3Backend(Backend):
    name = "pyttsx3"

    def __init__(self, rate_wpm: int) -> None:
        self.rate_wpm = rate_wpm
        self._engine: Any = None
        self._on_start: Callable[[], None] | None = None

    def open(self) -> None:
        if sys.platform.startswith("linux") and shutil.which("aplay") is None:
            # pyttsx3's espeak driver plays through `aplay` and ignores its failure: say so instead.
            raise SpeechUnavailable(
                "pyttsx3 plays through aplay, which is not installed (apt-get install alsa-utils)"
            )
        try:
            import pyttsx3

            self._engine = pyttsx3.init()
            self._engine.setProperty("rate", self.rate_wpm)
            self._engine.connect("started-utterance", lambda name: self._on_start and self._on_start())
        except Exception as exc:  # any driver failure means: no speech on this machine
            raise SpeechUnavailable(f"pyttsx3 could not start ({exc}); is espeak-ng installed?") from exc

    def speak(self, text: str, wav_path: Path | None, on_start: Callable[[], None]) -> None:
        self._on_start = on_start
        try:
            self._engine.say(text)
            self._engine.runAndWait()
        except Exception as exc:
            raise SpeechUnavailable(f"pyttsx3 failed: {exc}") from exc

    def close(self) -> None:
        if self._engine is not None:
            # An engine the driver already tore down has nothing left to release.
            with contextlib.suppress(Exception):
                self._engine.stop()
            self._engine = None


def _espeak_binary() -> str | None:
    return shutil.which("espeak-ng") or shutil.which("espeak")


class EspeakBackend(Backend):
    """The espeak-ng command line, playing directly."""

    name = "espeak"

    def __init__(self, rate_wpm: int) -> None:
        self.rate_wpm = rate_wpm
        self._bin: str | None = None

    def open(self) -> None:
        self._bin = _espeak_binary()
        if self._bin is None:
            raise SpeechUnavailable("espeak-ng is not installed (apt-get install espeak-ng)")

    def speak(self, text: str, wav_path: Path | None, on_start: Callable[[], None]) -> None:
        assert self._bin is not None
        on_start()
        proc = subprocess.run(
            [self._bin, "-s", str(self.rate_wpm), "--", text],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        # espeak-ng exits 0 even when there is no audio device; its stderr says so.
        err = proc.stderr.strip().splitlines()
        if proc.returncode != 0 or any(line.startswith("error") for line in err):
            raise SpeechUnavailable(
                f"espeak-ng cannot play sound ({(err or ['exit ' + str(proc.returncode)])[-1]})"
            )


class WavBackend(Backend):
    """One WAV file per utterance (espeak-ng -w, else pyttsx3 save_to_file), for recordings and tests."""

    name = "wav"

    def __init__(self, rate_wpm: int) -> None:
        self.rate_wpm = rate_wpm
        self._bin: str | None = None
        self._engine: Any = None

    def open(self) -> None:
        self._bin = _espeak_binary()
        if self._bin is not None:
            return
        try:
            import pyttsx3

            self._engine = pyttsx3.init()
            self._engine.setProperty("rate", self.rate_wpm)
        except Exception as exc:
            raise SpeechUnavailable(f"no espeak-ng and pyttsx3 could not start ({exc})") from exc

    def speak(self, text: str, wav_path: Path | None, on_start: Callable[[], None]) -> None:
        if wav_path is None:
            raise SpeechUnavailable("wav backend needs an output folder")
        on_start()
        wav_path.parent.mkdir(parents=True, exist_ok=True)
        if self._bin is not None:
            proc = subprocess.run(
                [self._bin, "-s", str(self.rate_wpm), "-w", str(wav_path), "--", text],
                capture_output=True,
                text=True,
                check=False,
                timeout=60,
            )
            if proc.returncode != 0:
                raise SpeechUnavailable(f"espeak-ng -w failed: {proc.stderr.strip()[:200]}")
        else:
            self._engine.save_to_file(text, str(wav_path))
            self._engine.runAndWait()
        if not wav_path.is_file() or wav_path.stat().st_size <= 44:
            raise SpeechUnavailable(f"TTS wrote no audio to {wav_path}")
        log.info("speech: %r -> %s", text, wav_path.name)


def wav_duration_s(path: Path) -> float:
    import wave

    try:
        with wave.open(str(path)) as w:
            return w.getnframes() / float(w.getframerate() or 1)
    except (OSError, EOFError, wave.Error):
        return 0.0


def sound_output() -> tuple[bool, str]:
    """Whether anything can play sound here: a PulseAudio/PipeWire server or an ALSA playback device."""
    if os.environ.get("PULSE_SERVER") or Path(f"/run/user/{os.getuid()}/pulse/native").exists():
        return True, "PulseAudio server"
    snd = Path("/dev/snd")
    if snd.is_dir() and any(p.name.startswith("pcm") and p.name.endswith("p") for p in snd.iterdir()):
        return True, "ALSA playback device"
    return False, "no sound output (no ALSA playback device in /dev/snd, no PulseAudio server)"


def live_backend() -> tuple[str, str]:
    """The backend ``speech.backend: auto`` means for a live run, and why: ("none", reason) when it cannot play."""
    if _espeak_binary() is None:
        return "none", "espeak-ng is not installed (apt-get install espeak-ng)"
    ok, why = sound_output()
    if not ok:
        return "none", why
    if importlib.util.find_spec("pyttsx3") is not None:
        return "pyttsx3", f"pyttsx3 over espeak-ng, {why}"
    return "espeak", f"espeak-ng command line, {why}"


def backend_for_job(name: str, job: str) -> tuple[str, str | None]:
    """``auto`` resolved for a job: ``run`` speaks where it can, every other job is silent unless asked.

    Returns the backend and, when a live run cannot speak, the one warning to give.
    """
    if name != "auto":
        return name, None
    if job != "run":
        return "none", None
    backend, why = live_backend()
    if backend == "none":
        return (
            "none",
            f"speech: {why}; captions are shown but not spoken (--speech wav records them, --speech none hides this)",
        )
    return backend, None


def make_backend(name: str, rate_wpm: int) -> Backend:
    if name == "pyttsx3":
        return Pyttsx3Backend(rate_wpm)
    if name == "espeak":
        return EspeakBackend(rate_wpm)
    if name == "wav":
        return WavBackend(rate_wpm)
    return Backend()
