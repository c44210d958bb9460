"""fex demo: choosing faces by track id, "largest", an emotion per track; unchosen faces stay bit-identical."""

import cv2
import numpy as np
import pytest

import fexsdk
from fexsdk.cli import build_parser, main
from fexsdk.video import DemoConfig, DemoLoop, draw_track_ids, open_video_sink

skimage_data = pytest.importorskip("skimage.data")

SPLIT = 300  # every pixel left of this column belongs to the small face's half, right of it to the big face's


@pytest.fixture(scope="module")
def pair():
    """Two real faces: a small one on the left, a large one on the right, 120 px of grey between them."""
    face = cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR)[:300, 100:400]
    canvas = np.full((340, 700, 3), 200, np.uint8)
    canvas[50:290, 0:240] = cv2.resize(face, (240, 240))
    canvas[:, 360:700] = cv2.resize(face, (340, 340))
    return canvas


@pytest.fixture(scope="module")
def tr():
    return fexsdk.Transfer("warp", threads=1)


def _loop(tr, **kwargs) -> DemoLoop:
    return DemoLoop(DemoConfig(headless=True, overlay=False, quiet=True, **kwargs), transfer=tr)


@pytest.fixture(scope="module")
def ids(tr, pair):
    """(left, right): the track ids the demo gives the small and the large face on the first frame."""
    loop = _loop(tr)
    loop.process(pair)
    tracks = loop.tracker.tracks
    assert len(tracks) == 2
    left = [t.id for t in tracks if t.box[0] < SPLIT]
    right = [t.id for t in tracks if t.box[0] >= SPLIT]
    assert len(left) == len(right) == 1
    return left[0], right[0]


def _halves(img):
    return img[:, :SPLIT], img[:, SPLIT:]


def _as_when_all_change(a, b) -> bool:
    """Equal up to float rounding: the generator's output for a face moves by about 1e-6 between a batch of
    one and of two faces (the runtime's kernels), which can flip a pixel's rounding by one grey level."""
    d = np.abs(a.astype(int) - b)
    return d.max() <= 1 and np.count_nonzero(d) <= 1e-3 * d.size


def test_track_ids_start_at_zero_and_are_the_same_on_every_run(tr, pair, ids):
    assert sorted(ids) == [0, 1]
    loop = _loop(tr)
    loop.process(pair)
    left = [t.id for t in loop.tracker.tracks if t.box[0] < SPLIT]
    assert left == [ids[0]]


def test_chosen_tracks_change_the_others_stay_bit_identical(tr, pair, ids):
    left, right = ids
    everyone = _loop(tr, emotion="surprise").process(pair)
    only_left = _loop(tr, emotion="surprise", faces=[left]).process(pair)
    assert np.array_equal(_halves(only_left)[1], _halves(pair)[1])  # the big face: untouched
    assert _as_when_all_change(_halves(only_left)[0], _halves(everyone)[0])  # the small one
    assert not np.array_equal(_halves(only_left)[0], _halves(pair)[0])
    only_right = _loop(tr, emotion="surprise", faces=(right,)).process(pair)
    assert np.array_equal(_halves(only_right)[0], _halves(pair)[0])
    assert _as_when_all_change(_halves(only_right)[1], _halves(everyone)[1])
    # an id no track has: nothing changes
    assert np.array_equal(_loop(tr, faces=[7]).process(pair), pair)


def test_largest_is_the_largest_track_on_the_frame(tr, pair, ids):
    everyone = _loop(tr, emotion="sad").process(pair)
    largest = _loop(tr, emotion="sad", faces="largest").process(pair)
    assert np.array_equal(_halves(largest)[0], _halves(pair)[0])
    assert _as_when_all_change(_halves(largest)[1], _halves(everyone)[1])
    assert not np.array_equal(_halves(largest)[1], _halves(pair)[1])


def test_an_emotion_per_track_is_that_emotion_with_the_tracks_noise(tr, pair, ids):
    left, right = ids
    loop = _loop(tr, emotion={left: "sad", right: "happy"}, seed=3)
    mixed = loop.process(pair)
    faces = [t.face() for t in loop.tracker.tracks]  # in id order: face i is track i, with its noise
    happy, sad = (tr.apply(pair, e, faces=faces, seed=3) for e in ("happy", "sad"))  # both faces, as in `mixed`
    assert np.array_equal(_halves(mixed)[0], _halves(sad)[0])
    assert np.array_equal(_halves(mixed)[1], _halves(happy)[1])
    assert not np.array_equal(_halves(mixed)[1], _halves(sad)[1])
    # a track not in the mapping stays as it is
    one = _loop(tr, emotion={left: "sad"}, seed=3).process(pair)
    assert np.array_equal(_halves(one)[1], _halves(pair)[1])
    assert _as_when_all_change(_halves(one)[0], _halves(sad)[0])
    # faces= and the mapping together: a track changes when it is chosen and has an emotion
    both = _loop(tr, emotion={left: "sad", right: "happy"}, faces="largest", seed=3).process(pair)
    assert np.array_equal(_halves(both)[0], _halves(pair)[0])
    assert _as_when_all_change(_halves(both)[1], _halves(happy)[1])


def test_keys_set_the_emotion_of_every_chosen_track(tr, pair, ids):
    left, right = ids
    loop = _loop(tr, emotion={left: "sad", right: "happy"})
    assert loop.target == "sad"  # the first track's, shown and stepped by n/p
    assert loop.handle_key(ord("6")) and loop.track_emotions == {left: 5, right: 5} and loop.target == "surprise"
    assert np.array_equal(loop.process(pair), _loop(tr, emotion="surprise").process(pair))
    assert loop.handle_key(ord("n")) and loop.track_emotions == {left: 6, right: 6}
    assert loop.handle_key(ord("n")) and loop.track_emotions == {left: 0, right: 0}
    assert loop.handle_key(ord("p")) and loop.target == "neutral"
    chosen = _loop(tr, emotion="happy", faces=[right])
    chosen.handle_key(ord("5"))
    out = chosen.process(pair)
    assert np.array_equal(_halves(out)[0], _halves(pair)[0])
    assert _as_when_all_change(_halves(out)[1], _halves(_loop(tr, emotion="sad").process(pair))[1])


def test_the_overlay_shows_each_tracks_id_at_its_box(tr, pair, ids):
    left, right = ids
    loop = _loop(tr, emotion={right: "happy"})
    clean = loop.process(pair)
    assert sorted(label for _, label in loop._labels) == sorted([str(left), f"{right} happy"])
    marked = loop.with_overlay(clean)
    for t in loop.tracker.tracks:  # a label just above each box's top-left corner
        x, y = int(t.box[0]), int(t.box[1])
        assert not np.array_equal(marked[max(y - 12, 0) : y, x : x + 20], clean[max(y - 12, 0) : y, x : x + 20])
    assert "happy" in loop.overlay_lines(2)[0]
    # a box at the frame's corner: the label goes inside it, within the frame
    img = np.full((60, 80, 3), 128, np.uint8)
    out = draw_track_ids(img.copy(), [((0.0, 0.0, 30.0, 30.0), "12"), ((70.0, 50.0, 30.0, 30.0), "3 sad")])
    assert out.shape == img.shape and not np.array_equal(out[:15, :20], img[:15, :20])
    assert not np.array_equal(out[40:, 50:], img[40:, 50:])


@pytest.mark.parametrize("kwargs, message", [
    ({"faces": "biggest"}, 'faces must be None (every track), "largest"'),
    ({"faces": "1,3"}, "a list of track ids"),
    ({"faces": []}, "an empty list"),
    ({"faces": [1, -2]}, "-2 in [1, -2] is not a track id"),
    ({"faces": [True]}, "True in [True] is not a track id"),
    ({"emotion": {}}, "emotion is an empty mapping"),
    ({"emotion": {1: "happyy"}}, "emotion for track 1: unknown emotion 'happyy'"),
    ({"emotion": {"1": "happy"}}, "got the key '1'"),
    ({"emotion": {"happy": 0.7}}, "intensities such as {'happy': 0.7} are not supported in video"),
    ({"emotion": {1: "happy"}, "faces": [2]}, "no id in common"),
])
def test_bad_choices_are_refused(kwargs, message):
    with pytest.raises(ValueError) as err:
        DemoConfig(headless=True, **kwargs).validate()
    assert message in str(err.value)


def test_cli_parses_track_ids_and_an_emotion_per_track(capsys):
    parse = build_parser().parse_args
    args = parse(["demo", "--faces", "1,3", "-e", "1:happy,3:sad"])
    assert args.faces == [1, 3] and args.emotion == {1: "happy", 3: "sad"}
    args = parse(["demo", "--faces", "largest", "-e", "surprise"])
    assert args.faces == "largest" and args.emotion == "surprise"  # one emotion: as typed, as before
    args = parse(["demo"])
    assert args.faces is None and args.emotion == "happy"
    assert parse(["demo", "--faces", "all"]).faces is None
    for bad, message in ((["--faces", "1,x"], "track ids such as 1,3"), (["-e", "1:happy,1:sad"], "face 1 is given twice"),
                         (["-e", "1:joyful"], "unknown emotion 'joyful'")):
        with pytest.raises(SystemExit):
            parse(["demo", *bad])
        assert message in capsys.readouterr().err


def test_cli_demo_changes_only_the_chosen_track_in_a_written_video(pair, ids, tmp_path):
    left, right = ids
    src, dst = tmp_path / "in.mkv", tmp_path / "out.mkv"
    sink = open_video_sink(str(src), 10.0, (pair.shape[1], pair.shape[0]))  # FFV1: lossless
    for _ in range(3):
        sink.write(pair)
    sink.close()
    assert main(["demo", "--input", str(src), "--output", str(dst), "--model", "warp", "--threads", "1",
                 "--faces", str(left), "-e", f"{left}:sad,{right}:happy"]) == 0

    def decode(path):
        cap, frames = cv2.VideoCapture(str(path)), []
        while True:
            ok, f = cap.read()
            if not ok:
                break
            frames.append(f)
        cap.release()
        return frames

    ins, outs = decode(src), decode(dst)
    assert len(ins) == len(outs) == 3
    for a, b in zip(ins, outs):
        assert np.array_equal(_halves(b)[1], _halves(a)[1])  # the unchosen big face, bit for bit
        assert not np.array_equal(_halves(b)[0], _halves(a)[0])
