"""python -m cxr.predict --model results/<name>/final PATH...: pneumonia probability and decision per film
(JPEG, PNG, DICOM; folders recursively), with an error row for each file that cannot be read."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cxr.errors import InputError
from cxr.images import FILM_SUFFIXES

BATCH = 64  # films decoded and predicted at a time: memory stays flat on folders of any size


def collect(paths: list[str]) -> list[Path]:
    """Files as given, and the films inside folders (recursively, sorted)."""
    files = []
    for given in map(Path, paths):
        if given.is_dir():
            files += sorted(p for p in given.rglob("*") if p.is_file() and p.suffix.lower() in FILM_SUFFIXES)
        elif given.exists():
            files.append(given)
        else:
            raise InputError(f"{given} does not exist: pass film files or folders")
    if not files:
        raise InputError(f"no films ({'/'.join(sorted(FILM_SUFFIXES))}) in {', '.join(paths)}: pass other files or folders")
    return files


def predict_files(model, files: list[Path], cam_dir: Path | None = None, progress: bool = False):
    import numpy as np
    import pandas as pd
    from tqdm import tqdm

    frames = []
    with tqdm(total=len(files), unit="film", disable=not progress) as bar:
        for start in range(0, len(files), BATCH):
            chunk = files[start : start + BATCH]
            frame = model.predict(chunk)
            if cam_dir is not None:
                frame["cam"] = [_cam(model, f, cam_dir) if np.isfinite(p) else None for f, p in zip(chunk, frame["probability"])]
            frames.append(frame)
            bar.update(len(chunk))
    return pd.concat(frames, ignore_index=True)


def _cam(model, film: Path, cam_dir: Path) -> str:
    from cxr.cam import grad_cam, write_overlay
    from cxr.images import decode, read_film

    heat = grad_cam(model.members, decode(str(film), model.image_size), model.image_size)
    return str(write_overlay(read_film(str(film)), heat, cam_dir / f"{film.stem}.cam.png"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxr.predict", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="film files and/or folders (searched recursively)")
    parser.add_argument("--model", required=True, help="the final/ folder of a finished tune.run experiment")
    parser.add_argument("--out", help="write the table here (.csv or .parquet); default: print it as CSV")
    parser.add_argument("--cam", metavar="DIR", help="also write a Grad-CAM overlay PNG per film into DIR")
    args = parser.parse_args(argv)
    try:
        if args.out and Path(args.out).suffix.lower() not in (".csv", ".parquet"):
            raise InputError(f"--out {args.out}: use a .csv or .parquet file name")
        files = collect(args.paths)
        from cxr.package import load_model

        model = load_model(args.model)
        cam_dir = Path(args.cam) if args.cam else None
        if cam_dir is not None:
            cam_dir.mkdir(parents=True, exist_ok=True)
        frame = predict_files(model, files, cam_dir, progress=len(files) > 5 and sys.stderr.isatty())
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
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
