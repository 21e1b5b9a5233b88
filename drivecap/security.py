"""Small guards for untrusted input: credentials in source URLs, caption text in subtitle files, output paths.

A source URL such as ``rtsp://user:secret@camera/stream`` must never reach a log line, an event or an
error message with its password; :func:`mask_url` replaces the user-info part. Caption text comes from a
model (or a user's bundle) and may hold anything: :func:`subtitle_text` turns it into one line that cannot
end, fake or corrupt an SRT/WebVTT cue. :func:`contained_path` is the last check that an output file built
from a source name stays inside its output folder.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from drivecap.errors import DrivecapError

# scheme://[userinfo@]host...: the user-info part ends at the last '@' before the first '/', '?' or '#'.
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#\s]*)@")


def mask_url(text: str) -> str:
    """``text`` with the password (and user name) of every ``scheme://user:pass@host`` URL in it masked.

    ``rtsp://admin:secret@10.0.0.2/live`` -> ``rtsp://***:***@10.0.0.2/live``. Works on whole messages, so
    an error text that quotes a URL can be masked as it is.
    """

    def repl(m: re.Match[str]) -> str:
        userinfo = m.group("userinfo")
        masked = "***:***" if ":" in userinfo else "***"
        return f"{m.group('scheme')}{masked}@"

    return _URL_USERINFO.sub(repl, text)


# Characters that break a line-based subtitle format, or a UTF-8 file: C0/C1 controls (\x85 is NEL),
# line and paragraph separators, lone surrogates (cannot be encoded), and the byte-order mark.
_BREAKING_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})


def subtitle_text(text: str | None) -> str:
    """Caption text made safe for one SRT/WebVTT cue payload (may be empty: then there is no cue).

    Control characters, line breaks and surrogates become spaces, the BOM goes, ``-->`` (the cue-timing
    arrow) becomes ``->``, and runs of white space collapse to one space, so the payload is a single
    non-blank line with no timing arrow: it can neither end its cue early nor start a fake one.
    """
    if not text:
        return ""
    chars = []
    for ch in text:
        if ch == "\ufeff":
            continue
        chars.append(" " if unicodedata.category(ch) in _BREAKING_CATEGORIES else ch)
    out = " ".join("".join(chars).split())
    while "-->" in out:
        out = out.replace("-->", "->")
    return out


def contained_path(folder: str | Path, name: str) -> Path:
    """``folder / name``, checked to stay inside ``folder`` (raises ValueError otherwise).

    Output names are already sanitised (:func:`drivecap.pipeline.runner.safe_name`); this is the belt to those
    braces for any code that joins a name onto an output folder.
    """
    if not name or "\x00" in name or "/" in name or "\\" in name or name in (".", ".."):
        raise ValueError(f"output name {name!r} is not a plain file name")
    base = Path(folder).resolve()
    path = (base / name).resolve()
    if path.parent != base:
        raise ValueError(f"output name {name!r} leaves the folder {base}")
    return base / name


def ensure_output_dir(folder: str | Path) -> Path:
    """Creates the output folder (and parents) or raises one clear :class:`DrivecapError`.

    Running as root, permission bits do not stop writes, but a parent that is a regular file (or a
    read-only mount, a full disk) still does: the message names the folder and the reason.
    """
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DrivecapError(
            f"cannot create output folder {path} ({exc.strerror or exc.__class__.__name__}); "
            "choose a writable --out folder"
        ) from None
    if not path.is_dir():
        raise DrivecapError(f"output folder {path} is not a folder; choose another --out")
    return path


def write_output_text(path: str | Path, text: str) -> None:
    """Writes a small output file (a run summary) or raises one clear :class:`DrivecapError` (disk full...)."""
    p = Path(path)
    try:
        p.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise DrivecapError(
            f"cannot write {p} ({exc.strerror or exc}); free some space or choose another --out"
        ) from None


def video_file_plays(path: str | Path) -> bool:
    """Whether OpenCV reopens a written video and decodes its first frame (its index was written)."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        return bool(cap.isOpened() and cap.read()[0])
    finally:
        cap.release()
