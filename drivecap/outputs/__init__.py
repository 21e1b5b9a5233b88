"""What a run produces, each output on its own: overlay, video file, subtitles, event log, window, speech.

Outputs know no pipeline: they are handed frames, captions and events.
"""
