"""The preview window, only where a display exists (opencv-python's Qt build aborts the process without one)."""

from __future__ import annotations

import logging
import os
import sys

import numpy as np
import numpy.typing as npt

from drivecap.outputs.base import Sink

log = logging.getLogger(__name__)

Image = npt.NDArray[np.uint8]


# --------------------------------------------------------------------------------------------- window


def display_available() -> tuple[bool, str]:
    """(can we open a window, why not). Headless OpenCV wheels have no GUI backend at all, and a Qt build
    aborts the whole process when there is no display, so both are checked before any imshow."""
    import cv2

    gui = "NONE"
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GUI:"):
            gui = line.split(":", 1)[1].strip()
            break
    if gui.upper() == "NONE":
        return False, f"this OpenCV {cv2.__version__} has no GUI backend (opencv-python-headless)"
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        return False, "no display (DISPLAY / WAYLAND_DISPLAY not set)"
    return True, gui


class WindowSink(Sink):
    """Shows frames in a window where a display exists; otherwise logs once and does nothing.

    Keys: q or Esc asks the pipeline to stop, h toggles the HUD.
    """

    def __init__(self, title: str = "drivecap", enabled: bool = True) -> None:
        self.title = title
        self.quit_requested = False
        self.toggle_hud_requested = False
        ok, why = display_available() if enabled else (False, "output.window=false")
        self.active = ok
        self._opened = False
        if not ok and enabled:
            log.info("window skipped: %s", why)

    def write(self, frame: Image) -> None:
        if not self.active:
            return
        import cv2

        try:
            if not self._opened:
                cv2.namedWindow(self.title, cv2.WINDOW_NORMAL)
                self._opened = True
            cv2.imshow(self.title, frame)
            key = cv2.waitKey(1) & 0xFF
        except cv2.error as exc:
            log.warning("window disabled: %s", str(exc).strip().splitlines()[-1])
            self.active = False
            return
        if key in (ord("q"), 27):
            self.quit_requested = True
        elif key == ord("h"):
            self.toggle_hud_requested = True

    def close(self) -> None:
        if self._opened:
            import cv2

            try:
                cv2.destroyWindow(self.title)
                cv2.waitKey(1)
            except cv2.error:
                pass
            self._opened = False
