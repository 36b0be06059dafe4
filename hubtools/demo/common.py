"""What every demo shares: a local hub in its work folder, numbered stage lines with elapsed time,
training scripts launched as a user launches them, and the closing links to what it published."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hubtools import PROJECT as ROOT


class Stages:
    """Prints `[n/total] text  (t=…s)`: where a long demo is, and how long it has run."""

    def __init__(self, total: int):
        self.total, self.n, self.t0 = total, 0, time.time()

    def __call__(self, text: str) -> None:
        self.n += 1
        print(f"\n[{self.n}/{self.total}] {text}  (t={self.elapsed():.0f}s)", flush=True)

    def elapsed(self) -> float:
        return time.time() - self.t0


def workdir(path: str | None, task: str) -> Path:
    work = Path(path or tempfile.mkdtemp(prefix=f"hubtools-demo-{task}-"))
    work.mkdir(parents=True, exist_ok=True)
    return work


def local_hub(work: Path) -> str:
    """The hub the demo publishes to: HF_ENDPOINT when set, else a local hub serving `work/hub` on a
    background thread (the OS picks a free port). Downloads are cached under `work`."""
    if not os.environ.get("HF_ENDPOINT"):
        from hubtools.hubenv import configure_for_endpoint
        from hubtools.localhub.server import HubServer
        configure_for_endpoint(HubServer(work / "hub", port=0).start_thread().url)
    endpoint = os.environ["HF_ENDPOINT"]
    os.environ.setdefault("HF_HUB_CACHE", str(work / "hf-cache"))
    print(f"hub: {endpoint} (data in {work / 'hub'})")
    return endpoint


def launch(script: str, recipe: Path, *flags: str) -> None:
    """`accelerate launch` a training script (train/`script`) with `recipe` and `flags` on this CPU, as a
    user would (train/accelerate/cpu.yaml)."""
    subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                    str(ROOT / "train" / "accelerate" / "cpu.yaml"), str(ROOT / "train" / script),
                    "--config", str(recipe), *flags], check=True, cwd=ROOT)


def finish(endpoint: str, work: Path, dataset_repo: str, model_repos: dict[str, list[str]], extra: list[str],
           serve: bool) -> None:
    """Print where everything was published (pages of the local hub), then keep serving if asked."""
    print(f"\nPublished on {endpoint} (open in a browser):")
    print(f"  dataset  {endpoint}/datasets/{dataset_repo}")
    for repo, revisions in model_repos.items():
        print(f"  run      {endpoint}/{repo}/run   (every step-N: training metric and eval results)")
        for rev in revisions + ["latest", "main"]:
            print(f"  model    {endpoint}/{repo}/tree/{rev}")
    for line in extra:
        print(f"  {line}")
    if serve:
        print("Serving until Ctrl-C.", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    else:
        print(f"Browse again later: hubtools hub serve --root {work / 'hub'}  (or run the demo with --serve)")
