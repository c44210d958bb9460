"""The ``fex`` command. Each subcommand imports what it needs only when it runs.

The runtime's commands (apply, grid, demo, serve) are here; train, train-classifier, eval and export
are added by ``fexsdk.training.commands`` and ``fexsdk.export.commands`` (see :mod:`fexsdk.plugins`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from fexsdk import plugins
from fexsdk._extras import require
from fexsdk.options import DEMO_TRANSFER, TransferOptions, add_transfer_arguments, float_range, int_range


# The argument types live with the transfer options' flags (fexsdk.options), which every subcommand shares.
_int_range, _float_range = int_range, float_range


_SEED = _int_range(0)
_POSITIVE = _int_range(1)
_PORT = _int_range(1, 65535)
# For the commands other packages add (fexsdk.plugins): the same argument types and checks.
SEED, POSITIVE = _SEED, _POSITIVE


def _check_out_folder(out: str | None, option: str = "--out") -> None:
    """An output folder may exist (as a folder) or not yet; a file there is refused before any work."""
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise ValueError(f"{option} {out} is a file; give a folder (it is created if missing)")


check_out_folder = _check_out_folder


def _check_image_input(path: str) -> None:
    from fexsdk.images import check_image_file

    check_image_file(path)  # a folder, a device (/dev/zero) or a FIFO each get their own message


def _can_write(suffix: str) -> bool:
    from fexsdk.images import can_write

    return can_write(suffix)


def _check_image_output(output: str, inputs: Sequence[str] = ()) -> None:
    """Refuse an output image path that cannot be written, before any work is done."""
    path = Path(output)
    if path.is_dir():
        raise ValueError(f"output {path} is a folder; give a file name such as {path / 'out.png'}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"output folder does not exist: {parent} (create it first)")
    if not path.suffix:
        raise ValueError(f"output {path} has no extension; add one that names the image format, e.g. {path}.png or .jpg")
    if not _can_write(path.suffix):
        raise ValueError(f"output {path}: OpenCV cannot write {path.suffix!r} images; use .png, .jpg, .bmp, .tif or .webp")
    for src in inputs:
        if Path(src).exists() and path.exists() and os.path.samefile(src, path):
            raise ValueError(f"output {path} is the input image; writing it would replace your original: choose another name")


def _faces_choice(text: str):
    """``--faces``: all (None), largest, or comma-separated indices (faces numbered left to right)."""
    text = text.strip()
    if text in ("all", "largest"):
        return None if text == "all" else text
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected all, largest or face indices such as 0,2 (left to right), got {text!r}")
    return [int(p) for p in parts]


def _track_choice(text: str):
    """``fex demo --faces``: all (None), largest (on each frame), or comma-separated track ids."""
    try:
        return _faces_choice(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected all, largest or track ids such as 1,3 (drawn at each face in the "
                                         f"overlay), got {text.strip()!r}") from None


def _demo_emotion(text: str):
    """``fex demo -e``: one emotion as typed (checked by DemoConfig, as before), or one per track id, 1:happy,3:sad."""
    if ":" not in text:
        return text
    from fexsdk.emotions import parse_target

    try:
        return parse_target(text)  # {track id: emotion}; DemoConfig refuses intensities
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_runtime(sub: argparse._SubParsersAction) -> None:
    common = add_transfer_arguments(argparse.ArgumentParser(add_help=False))
    common.add_argument("--seed", type=_SEED, default=0, help="test-time noise seed (same seed, same result)")
    a = sub.add_parser("apply", parents=[common], help="change the expression of every face in an image")
    a.add_argument("input", nargs="+",
                   help="image file (8-bit, 16-bit or float; gray, BGR or with alpha; EXIF orientation applied), "
                        "or several, a folder or a glob such as 'photos/*.jpg': then -o is a folder")
    a.add_argument("-e", "--emotion", required=True,
                   help="target emotion: name, alias or index 0-6; or intensities name=0.7,name=0.3 (each in [0, 1], sum <= 1); "
                        "or one per face, faces numbered left to right: 0:happy,2:sad (faces not named stay as they are)")
    a.add_argument("--faces", type=_faces_choice, default=None, metavar="WHICH",
                   help="which faces to change: all (default), largest, or indices left to right such as 0,2")
    a.add_argument("-o", "--output", required=True,
                   help="image file to write, its extension naming the format (.png, .jpg); for several inputs, a "
                        "folder (created if missing) that gets one image per input, with the input's name")
    add_transfer_arguments(a, ("strength", "align"))
    a.set_defaults(func=_run_apply)
    g = sub.add_parser("grid", parents=[common], help="each face and its 7 expressions side by side")
    g.add_argument("input", help="image file with one or more faces")
    g.add_argument("-o", "--output", required=True, help="image file to write; its extension names the format (.png, .jpg)")
    g.add_argument("--cell", type=_int_range(16, 2048), default=144, help="size of each cell in pixels (16-2048)")
    g.set_defaults(func=_run_grid)


def _transfer(args: argparse.Namespace):
    from fexsdk.transfer import Transfer

    return Transfer.from_options(TransferOptions.from_args(args))


def _write(path: str, image) -> None:
    import cv2

    if not cv2.imwrite(path, image):
        raise ValueError(f"OpenCV could not write {path} (disk full, or no permission?)")


def _apply_jobs(inputs: Sequence[str], output: str) -> tuple[list[tuple[Path, Path]], Path | None]:
    """(input, output) pairs for ``fex apply`` and the output folder: one file to a file (folder None),
    or several/a folder/a glob to a folder, even when the folder or glob holds a single image."""
    import glob

    from fexsdk.images import expand_inputs, output_names

    single = len(inputs) == 1 and not Path(inputs[0]).is_dir() and (Path(inputs[0]).exists() or not glob.has_magic(inputs[0]))
    if single:
        _check_image_input(inputs[0])
        _check_image_output(output, inputs)
        return [(Path(inputs[0]), Path(output))], None
    folder = Path(output)
    what = f"{inputs[0]} is a folder, not an image file" if len(inputs) == 1 and Path(inputs[0]).is_dir() \
        else f"{len(inputs)} inputs" if len(inputs) > 1 else f"{inputs[0]} is a pattern"
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{what}: to write one image per input, give -o an output folder ({output} is a file)")
    if not folder.exists() and folder.suffix and _can_write(folder.suffix):
        raise ValueError(f"{what}: to write one image per input, give -o an output folder, not an image name ({output})")
    sources = expand_inputs(inputs)
    jobs = list(zip(sources, output_names(sources, folder)))
    for src, dst in jobs:
        if dst.exists() and os.path.samefile(src, dst):
            raise ValueError(f"output {dst} is the input image; writing it would replace your original: "
                             "choose another output folder")
    return jobs, folder


def _run_apply(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from fexsdk.emotions import canonical_name, parse_target
    from fexsdk.images import read_image
    from fexsdk.transfer import to_uint8

    jobs, folder = _apply_jobs(args.input, args.output)
    target = parse_target(args.emotion)  # checked: a bad -e fails before the model is loaded
    tr = _transfer(args)
    what = args.emotion if isinstance(target, dict) else canonical_name(target)
    if folder is not None:  # created if missing, as --help says, however many images go into it
        folder.mkdir(parents=True, exist_ok=True)
    skipped, changed, faces_total = [], 0, 0
    bar = tqdm(jobs, unit="image", disable=len(jobs) == 1, file=sys.stderr, dynamic_ncols=True)
    for src, dst in bar:
        bar.set_postfix_str(src.name, refresh=False)
        try:
            # A truncated file is not processed: its lower part would be grey.
            image = to_uint8(read_image(src, truncated="error"), str(src))
            image, faces = tr.apply(image, target, faces=args.faces, seed=args.seed, strength=args.strength,
                                    return_faces=True)
        except (ValueError, FileNotFoundError) as exc:
            if len(jobs) == 1:
                raise  # one image: refused with an error (exit 2), as every bad input is
            skipped.append(src)
            tqdm.write(f"fex apply: warning: {exc}; skipped", file=sys.stderr)
            continue
        _write(str(dst), image)
        changed += bool(faces)
        faces_total += len(faces)
        if folder is None:
            print(f"{len(faces)} face(s) changed to {what}; wrote {dst}" if faces
                  else f"no face found in {src}; wrote it unchanged to {dst}")
    bar.close()
    if folder is not None:
        done = len(jobs) - len(skipped)
        print(f"{done} image(s) written to {args.output}: {faces_total} face(s) changed to {what} in {changed}, "
              f"no face in {done - changed}" + (f"; {len(skipped)} skipped" if skipped else ""))
    return 1 if skipped else 0


def _run_grid(args: argparse.Namespace) -> int:
    import cv2
    import numpy as np

    from fexsdk.emotions import EMOTIONS
    from fexsdk.grid import EMOTION_COLUMNS, image_grid
    from fexsdk.transfer import load_image

    _check_image_input(args.input)
    _check_image_output(args.output, [args.input])
    tr = _transfer(args)
    image = load_image(args.input)
    bgr = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image[..., :3]
    faces = tr.detect(bgr)
    if not faces:
        raise ValueError(f"no face found in {args.input}")
    records = tr.crop(bgr, tr.frame(bgr, faces))
    columns = []
    for emotion in (None, *EMOTIONS):
        if emotion is None:
            out = bgr
        else:
            out = tr.paste(bgr, tr.generate_faces(records, emotion, seed=args.seed))
        cells = [cv2.resize(out[max(r.box.y, 0): r.box.y2, max(r.box.x, 0): r.box.x2], (args.cell, args.cell),
                            interpolation=cv2.INTER_AREA) for r in records]
        columns.append(np.stack(cells))
    _write(args.output, image_grid(columns, EMOTION_COLUMNS))
    print(f"wrote {args.output}: {len(faces)} face(s) x (input + {len(EMOTIONS)} emotions)")
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="live expression transfer on a webcam or a video file",
                       description="Change the expression of every face in a webcam or video (or those --faces picks), live. Window keys: "
                                   "1-7 emotion, n/p next/previous, s save a frame, space original/transfer, q/Esc quit. "
                                   "With --output, --stream, --virtual-camera or --headless no window is opened. Ctrl-C or SIGTERM stops after the "
                                   "current frame and finishes the output file (it plays), then exits 130 or 143.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--camera", type=_int_range(0), metavar="INDEX", help="webcam index (default: 0 when no --input)")
    src.add_argument("--input", metavar="VIDEO", help="a video file (every frame is processed, in order) or a stream URL")
    p.add_argument("--output", metavar="VIDEO",
                   help="write the result here, no window; not the input. Through ffmpeg (imageio-ffmpeg), at the "
                        "input's frame rate and with its audio: .mp4/.mov H.264 (crf 18), .mkv lossless FFV1, "
                        ".avi MJPEG, .webm VP9; other suffixes through OpenCV (mp4v, no audio)")
    p.add_argument("--headless", action="store_true", help="no window (with no --output: process and print statistics)")
    p.add_argument("--stream", metavar="URL",
                   help="send the result as a live stream, no window (OBS reads it as a media source): through the "
                        "bundled ffmpeg, H.264 (ultrafast, zerolatency, a key frame every 0.5 s) in MPEG-TS to "
                        "udp://HOST:PORT, tcp://, srt://, rist://, rtp://, or in FLV to rtmp://, rtmps://; "
                        "combines with --output")
    p.add_argument("--virtual-camera", nargs="?", const=True, default=False, metavar="DEVICE",
                   help="send the result to a virtual camera (video calls, OBS), no window: needs pyvirtualcam "
                        '(pip install "fexsdk[vcam]") and v4l2loopback on Linux or OBS Virtual Camera on '
                        "Windows/macOS; DEVICE picks one (e.g. /dev/video10)")
    realtime = p.add_mutually_exclusive_group()
    realtime.add_argument("--realtime", action="store_true", default=None,
                          help="read a video file at its frame rate, as a camera would give it (default when "
                               "streaming or on a virtual camera)")
    realtime.add_argument("--no-realtime", dest="realtime", action="store_false",
                          help="read a video file as fast as it is processed, also when streaming")
    p.add_argument("--stats", metavar="FILE",
                   help="write the run's statistics as JSON: latency from capture to output (p50, p95, max, mean "
                        "ms), the FPS held, frames, stage timings")
    overlay = p.add_mutually_exclusive_group()
    overlay.add_argument("--overlay", action="store_true", default=None,
                         help="draw the emotion, FPS and timings into the written video, stream and virtual camera too "
                              "(default: window only)")
    overlay.add_argument("--no-overlay", dest="overlay", action="store_false",
                         help="do not draw them in the window either")
    add_transfer_arguments(p, ("align", "model", "detector", "device", "threads", "blend", "strength", "detect_size"),
                           help={"align": "do not turn tilted faces upright by their eye landmarks"},
                           defaults=DEMO_TRANSFER)
    p.add_argument("-e", "--emotion", type=_demo_emotion, default="happy",
                   help="emotion to start with: name, alias or index 0-6 (default: happy); or one per track id, "
                        "e.g. 1:happy,3:sad (tracks not named stay as they are; ids are drawn at each face in the overlay)")
    p.add_argument("--faces", type=_track_choice, default=None, metavar="WHICH",
                   help="which faces to change: all (default), largest (the largest on each frame), or track ids "
                        "such as 1,3 (ids start at 0 and are drawn at each face in the overlay)")
    p.add_argument("--seed", type=_SEED, default=0, help="noise seed; face track i keeps the noise face i gets from `fex apply --seed` for its whole life")
    p.add_argument("--fresh-noise", action="store_true", help="draw new dropout noise every frame (flickers; for comparison)")
    p.add_argument("--detect-every", type=_POSITIVE, default=3, metavar="K", help="run the face detector every K frames, track in between")
    p.add_argument("--faces-per-frame", type=_POSITIVE, default=None, metavar="N",
                   help="at most N faces through the generator per frame, the longest-waiting first; the others are "
                        "pasted with their last edit at where they are now (default: every face on every frame; "
                        "2 keeps four faces at 1280x720 near 60 fps on two cores)")
    p.add_argument("--detect-inline", dest="detect_thread", action="store_false",
                   help="detect in the loop's own thread instead of a detector thread that overlaps generation "
                        "(slower where two cores are free; the faces found are the same, one detection earlier)")
    p.add_argument("--smoothing", type=_float_range(0, 1, high_open=True), default=0.5,
                   help="box smoothing in [0, 1): weight of the previous box")
    p.add_argument("--velocity", type=_float_range(0, 1), default=0.3,
                   help="in [0, 1]: how fast boxes learn a face's motion and move on between detections (0: hold them)")
    p.add_argument("--drop-after", type=_POSITIVE, default=3, metavar="N", help="forget a face not seen for N detections in a row")
    p.add_argument("--max-frames", type=_POSITIVE, metavar="N", help="stop after N frames")
    p.add_argument("--fourcc", help="write with OpenCV's VideoWriter and this codec, 4 characters (e.g. mp4v, MJPG, "
                                    "FFV1, XVID): drops the audio; default: ffmpeg, codec by suffix")
    p.add_argument("--save-dir", default=".", help="where the s key saves frames")
    p.add_argument("--timeout", type=_float_range(0, low_open=True), default=10.0,
                   help="seconds to wait for the source to open or give a frame")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from fexsdk.video import DemoConfig, run_demo

    if args.stats is not None:
        folder = Path(args.stats).parent
        if not folder.is_dir():
            raise FileNotFoundError(f"--stats {args.stats}: folder does not exist: {folder}")
        if Path(args.stats).is_dir():
            raise ValueError(f"--stats {args.stats} is a folder; give a file name such as stats.json")
    vcam = args.virtual_camera
    cfg = DemoConfig(
        camera=args.camera, input=args.input, output=args.output, headless=args.headless, overlay=args.overlay,
        transfer=TransferOptions.from_args(args, DEMO_TRANSFER),
        emotion=args.emotion, faces=args.faces, faces_per_frame=args.faces_per_frame,
        seed=None if args.fresh_noise else args.seed,
        detect_every=args.detect_every, detect_thread=args.detect_thread,
        smoothing=args.smoothing, velocity=args.velocity, drop_after=args.drop_after,
        max_frames=args.max_frames, fourcc=args.fourcc, save_dir=args.save_dir, open_timeout=args.timeout,
        read_timeout=args.timeout, stream=args.stream, virtual_camera=bool(vcam),
        virtual_camera_device=vcam if isinstance(vcam, str) else None, realtime=args.realtime,
    )
    stats = run_demo(cfg)
    t = stats.timings_ms
    print(f"{stats.frames} frames ({stats.reason}) in {stats.seconds:.1f} s, {stats.fps:.1f} fps; "
          f"{stats.tracks} face track(s)")
    print("ms per stage: " + ", ".join(f"{k} {v:.1f}" for k, v in t.items())
          + " (detect per detection, in its own thread by default; crop, generate, paste per frame with faces)")
    if stats.faces_reused:
        print(f"faces through the generator: {stats.faces_generated}; pasted with their last edit: {stats.faces_reused}")
    lat = stats.latency_summary()
    if lat["p50"] is not None:
        paced = f" (paced at the source's {stats.source_fps:g} fps)" if stats.realtime and stats.source_fps else ""
        print(f"latency capture to output: p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms, max {lat['max']:.1f} ms; "
              f"held {stats.fps:.1f} fps{paced}")
    if stats.dropped:
        print(f"dropped {stats.dropped} stale camera frame(s) to keep up")
    if stats.output:
        print(f"wrote {stats.output} ({stats.written} frames)")
    if stats.stream:
        print(f"streamed {stats.streamed} frames to {stats.stream}")
    if stats.virtual_camera:
        print(f"sent {stats.camera_frames} frames to the virtual camera {stats.virtual_camera}")
    if args.stats is not None:
        stats.write_json(args.stats)
        print(f"wrote statistics to {args.stats}")
    if stats.stopped_by_signal:
        what = "Ctrl-C (SIGINT)" if stats.reason == "interrupted" else "SIGTERM"
        done = f"; {stats.output} is finished and playable ({stats.written} frames written)" if stats.output else ""
        print(f"fex demo: stopped by {what} after {stats.frames} frames{done}", file=sys.stderr)
        return 130 if stats.reason == "interrupted" else 143
    if stats.reason == "truncated":
        print(f"fex demo: warning: {args.input} ended after {stats.read} of the {stats.expected_frames} frames its "
              "header announces: the file is truncated or damaged", file=sys.stderr)
        return 1
    return 0


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="HTTP service on Ray Serve, batching faces across requests (needs the [serve] extra)",
                       description="Start fexsdk as an HTTP service on a local Ray instance and print its URL. Endpoints: "
                                   "POST /apply, /apply.json, /generate, /live; GET / (a page: photos, webcam), /healthz, /model, "
                                   "/models, /stats. Listens on 127.0.0.1; another --host needs --token (or "
                                   "FEX_TOKEN) or --no-auth. For a cluster, "
                                   "deploy serve.yaml with `serve deploy` instead.")
    add_transfer_arguments(p, ("model",))
    p.add_argument("--replicas", type=_POSITIVE, default=1, help="replicas (processes), each with its own model")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=_PORT, default=8000, help="TCP port to listen on (1-65535, default 8000)")
    p.add_argument("--max-batch", type=_POSITIVE, default=16, metavar="B",
                   help="faces per generator call, gathered across requests (1: no batching across requests)")
    p.add_argument("--batch-wait-ms", type=float, default=5.0, help="how long a batch waits to fill")
    add_transfer_arguments(p, ("device", "detector", "threads"), help={
        "device": "where each replica's model runs: auto (a GPU when the backend has one), cpu or cuda",
        "threads": "onnxruntime CPU threads per replica"})
    p.add_argument("--num-cpus", type=_POSITIVE, help="CPUs Ray may use (default: all)")
    p.add_argument("--token", help="every route (the page, the API, the live channel) needs this token (8+ characters; "
                                   "default: the FEX_TOKEN environment variable); required on a non-loopback --host")
    p.add_argument("--no-auth", action="store_true",
                   help="serve a non-loopback --host without a token (anyone who reaches it can use the service)")
    p.set_defaults(func=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    require("ray.serve", "serve", "fex serve")
    from fexsdk.serve import run_local

    if args.replicas < 1:
        raise ValueError(f"--replicas must be >= 1, got {args.replicas}")
    options = {"transfer": TransferOptions.from_args(args),
               "max_batch_size": args.max_batch, "batch_wait_s": args.batch_wait_ms / 1000.0,
               "token": args.token or os.environ.get("FEX_TOKEN") or None}
    run_local(options, replicas=args.replicas, host=args.host, port=args.port, num_cpus=args.num_cpus,
              no_auth=args.no_auth)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fex", description="fexsdk: facial expression transfer")
    from fexsdk import __version__

    parser.add_argument("--version", action="version", version=f"fexsdk {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    # Training, evaluation and export commands come from their own packages (fexsdk.plugins).
    for add_commands in plugins.load(plugins.COMMANDS_GROUP):
        add_commands(sub)
    _add_runtime(sub)
    _add_demo(sub)
    _add_serve(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # OpenMP pools (PyTorch's) wait passively unless the user chose otherwise: spinning threads on
    # cores that other processes share slow everything down (read when torch loads, which is later).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, ImportError, RuntimeError) as exc:
        print(f"fex {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
