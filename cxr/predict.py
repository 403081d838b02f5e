"""python -m cxr.predict --model results/<name>/final PATH...: pneumonia probability and decision per film
(JPEG, PNG, DICOM; folders recursively), with an error row for each file that cannot be read.

Every input gets exactly one row, in input order. Overlays (--cam DIR) mirror each film's path relative to the
common folder of all inputs, so studyA/IM0001.dcm and studyB/IM0001.dcm never share an overlay. Existing outputs
are never overwritten unless --overwrite is given."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cxr.cli import check_range, cli_entry
from cxr.errors import InputError
from cxr.images import FILM_SUFFIXES, MAX_PIXELS

BATCH = 64  # films decoded and predicted at a time: memory stays flat on folders of any size
CAM_SUFFIX = ".cam.png"


def collect(paths: list[str]) -> list[Path]:
    """Files as given, and the films inside folders (recursively, sorted); a file reached twice counts once."""
    files: dict[Path, Path] = {}
    for given in map(Path, paths):
        if given.is_dir():
            found = sorted(p for p in given.rglob("*") if p.is_file() and p.suffix.lower() in FILM_SUFFIXES)
        elif given.exists():
            found = [given]
        else:
            raise InputError(f"{given} does not exist: pass film files or folders")
        for file in found:
            files.setdefault(file.resolve(), file)
    if not files:
        raise InputError(f"no films ({'/'.join(sorted(FILM_SUFFIXES))}) in {', '.join(paths)}: pass other files or folders")
    return list(files.values())


def overlay_paths(files: list[Path], cam_dir: Path) -> list[Path]:
    """One overlay per film: its path relative to the common folder of all films, under cam_dir, with .cam.png
    appended to the whole name (a.png and a.jpeg stay apart). Distinct films, distinct overlays."""
    resolved = [f.resolve() for f in files]
    root = Path(os.path.commonpath([r.parent for r in resolved]))
    return [cam_dir / r.relative_to(root).with_name(r.name + CAM_SUFFIX) for r in resolved]


def predict_files(model, files: list[Path], overlays: list[Path] | None = None, progress: bool = False,
                  max_pixels: int = MAX_PIXELS):
    import numpy as np
    import pandas as pd
    from tqdm import tqdm

    frames = []
    with tqdm(total=len(files), unit="film", disable=not progress) as bar:
        for start in range(0, len(files), BATCH):
            chunk = files[start : start + BATCH]
            frame = model.predict(chunk, max_pixels=max_pixels)
            if overlays is not None:
                targets = overlays[start : start + BATCH]
                frame["cam"] = [_cam(model, f, t, max_pixels) if np.isfinite(p) else None
                                for f, t, p in zip(chunk, targets, frame["probability"])]
            frames.append(frame)
            bar.update(len(chunk))
    return pd.concat(frames, ignore_index=True)


def _cam(model, film: Path, target: Path, max_pixels: int) -> str:
    from cxr.cam import grad_cam, write_overlay
    from cxr.images import read_film, resize_array

    pixels = read_film(str(film), max_pixels)  # decoded once: the overlay's background and the members' input
    heat = grad_cam(model.members, resize_array(pixels, model.image_size), model.image_size,
                    contrast_norm=model.config.contrast_norm, precision=model.config.precision)
    target.parent.mkdir(parents=True, exist_ok=True)
    return str(write_overlay(pixels, heat, target))


def _check_cam_installed() -> None:
    import importlib.util

    if importlib.util.find_spec("pytorch_grad_cam") is None:
        raise InputError('--cam needs pytorch-grad-cam, which is not installed: pip install -e ".[cam]"')


def _refuse_existing(paths: list[Path], flag: str) -> None:
    existing = [p for p in paths if p.exists()]
    if existing:
        raise InputError(f"{flag}: {existing[0]} already exists ({len(existing)} output file(s) would be overwritten): "
                         "pass another path, remove them, or add --overwrite")


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxr.predict", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="film files and/or folders (searched recursively)")
    parser.add_argument("--model", required=True, help="the final/ folder of a finished tune.run experiment")
    parser.add_argument("--out", help="write the table here (.csv or .parquet); default: print it as CSV")
    parser.add_argument("--cam", metavar="DIR", help="also write a Grad-CAM overlay PNG per film into DIR")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file and overlays")
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                        help="films whose header claims more pixels are refused unread (an error row)")
    args = parser.parse_args(argv)
    if args.out and Path(args.out).suffix.lower() not in (".csv", ".parquet"):
        raise InputError(f"--out {args.out}: use a .csv or .parquet file name")
    check_range("max_pixels", args.max_pixels, "--max-pixels")
    if args.cam:
        _check_cam_installed()
    files = collect(args.paths)
    overlays = overlay_paths(files, Path(args.cam)) if args.cam else None
    if not args.overwrite:
        _refuse_existing([Path(args.out)] if args.out else [], "--out")
        _refuse_existing(overlays or [], "--cam")
    from cxr.package import load_model

    model = load_model(args.model)
    frame = predict_files(model, files, overlays, progress=len(files) > 5 and sys.stderr.isatty(),
                          max_pixels=args.max_pixels)
    if args.out:
        frame.to_parquet(args.out, index=False) if args.out.endswith(".parquet") else frame.to_csv(args.out, index=False)
    else:
        frame.to_csv(sys.stdout, index=False)
    failed = int(frame["error"].notna().sum())
    flagged = int((frame["decision"] == 1).sum())
    print(f"{len(frame)} film(s): {flagged} flagged as pneumonia at threshold {model.threshold:.4f}, "
          f"{len(frame) - failed - flagged} not flagged, {failed} unreadable"
          + (f"; table in {args.out}" if args.out else ""), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
