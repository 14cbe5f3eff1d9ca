"""The recipe's hour under a CPU hog (issue 50): `bench/recipe_hour.sh` with two busy processes started during
post-training and again during fine-tuning, each time `--hog_after` seconds into the stage (read from the stage's
"running" status in OUT/recipe.json) for `--hog_seconds` or until the stage ends. Prints when each hog ran and the
recipe's wall time as a share of its budget.

Usage: python bench/recipe_under_load.py [--minutes 60] [--seed 42] [--hog_after 120] [--hog_seconds 600]
  writes outputs/recipe-MINUTESm-sSEED-hog (reads ../shared/data/nikluge-ea-2023 or $NIKL_DATA, as recipe_hour.sh)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HOGGED_STAGES = ("post_train", "fine_tune")
BUSY = "while True: pass"  # one core's worth of someone else's work, no memory, no I/O
HOGS = 2


def stage_status(record_path: str, stage: str) -> str | None:
    try:
        with open(record_path, encoding="utf-8") as handle:
            return json.load(handle)["stages"].get(stage, {}).get("status")
    except (OSError, ValueError, KeyError):  # not written yet, or caught mid-replace
        return None


def hog_stage(recipe: subprocess.Popen, record_path: str, stage: str, args) -> dict | None:
    """Wait for `stage` to run, then hog the CPU while it does; None when the recipe ended first."""
    while (status := stage_status(record_path, stage)) != "running":
        if status == "done" or recipe.poll() is not None:
            return None
        time.sleep(1.0)
    began = time.monotonic()
    while time.monotonic() - began < args.hog_after:
        if stage_status(record_path, stage) != "running":
            return None
        time.sleep(1.0)
    hogs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(HOGS)]
    started = time.monotonic()
    while time.monotonic() - started < args.hog_seconds and stage_status(record_path, stage) == "running":
        time.sleep(1.0)
    for hog in hogs:
        hog.kill()
        hog.wait()
    return {"stage": stage, "into_stage_s": round(started - began, 1), "hogged_s": round(time.monotonic() - started)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--hog_after", type=float, default=120, help="seconds into a stage before the hog starts")
    parser.add_argument("--hog_seconds", type=float, default=600, help="how long each hog runs, at most")
    args = parser.parse_args()
    out = f"outputs/recipe-{args.minutes:g}m-s{args.seed}-hog"
    record_path = os.path.join(out, "recipe.json")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    started = time.monotonic()
    recipe = subprocess.Popen(
        ["bash", "bench/recipe_hour.sh", f"{args.minutes:g}", str(args.seed)],
        cwd=root,
        env={**os.environ, "RECIPE_OUT": out},
    )
    hogged = []
    for stage in HOGGED_STAGES:
        hog = hog_stage(recipe, os.path.join(root, record_path), stage, args)
        if hog:
            hogged.append(hog)
            print(
                f"hog: {HOGS} busy processes {hog['hogged_s']} s, from {hog['into_stage_s']:.0f} s into {stage}",
                flush=True,
            )
    code = recipe.wait()
    wall = time.monotonic() - started
    print(json.dumps({"hogs": hogged, "wall_s": round(wall), "share_of_budget": round(wall / 60 / args.minutes, 3)}))
    return code


if __name__ == "__main__":
    sys.exit(main())
