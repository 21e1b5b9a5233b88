"""Many drives replayed on Ray, and one SQLite index of every caption they got.

``runner`` (the only module that imports Ray) replays drives on Ray actors; ``index`` builds
``OUT/index.sqlite`` from the JSONL event logs of any folder of replays; ``search`` queries it (the CLI's
``drivecap search`` and the web drive browser use the same function). Nothing here imports Ray at import
time: ``import drivecap.fleet`` is cheap and safe where Ray is not installed.
"""

from __future__ import annotations

INDEX_NAME = "index.sqlite"
#: Written into each replayed drive's folder by the fleet runner: input, config and model hashes, status.
MANIFEST_NAME = ".drive.json"
#: One JSON file per drive that failed (``OUT/.failed/<drive>.json``): its one-line reason.
FAILED_DIR = ".failed"
