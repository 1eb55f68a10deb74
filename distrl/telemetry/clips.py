"""The evaluation clips of a run, as the telemetry side reads them (W&B, the dashboard).

The evaluator writes them (`distrl.actors.video`) into RUN_DIR/videos/ as `eval_<updates>.mp4`,
zero-padded so that sorting by name puts the newest last, each one whole: ffmpeg writes a hidden
temporary file that is renamed into place.
"""

from __future__ import annotations

from pathlib import Path

VIDEO_DIR = "videos"
CLIP_SUFFIX = ".mp4"


def list_clips(video_dir: Path) -> list[Path]:
    """The finished clips in `video_dir`, oldest first (none when it does not exist)."""
    try:
        entries = list(Path(video_dir).iterdir())
    except OSError:  # not created yet: no evaluation has recorded a clip
        return []
    clips = [p for p in entries if p.suffix == CLIP_SUFFIX and not p.name.startswith(".")]
    return sorted(clips, key=lambda p: p.name)


class NewClips:
    """The clips that appeared in `video_dir` since the last `take()`.

    Clips already there when it is made count as seen: they belong to an earlier session of the
    run (a resumed run), which has shown them already.
    """

    def __init__(self, video_dir: Path) -> None:
        self.video_dir = Path(video_dir)
        self._seen = {p.name for p in list_clips(self.video_dir)}

    def take(self) -> list[Path]:
        """New clips, oldest first; each is returned once."""
        new = [p for p in list_clips(self.video_dir) if p.name not in self._seen]
        self._seen.update(p.name for p in new)
        return new
