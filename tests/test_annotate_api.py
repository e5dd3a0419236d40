"""``medadapt annotate``'s HTTP API with the real LiteMedSAM: listing, prompts, undo, accept, resume, refusals."""

from __future__ import annotations

import contextlib
import inspect
import json
import socket
import threading
import time

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="the annotation app needs the app extra: pip install 'medadapt[app]'")
from fastapi.testclient import TestClient  # noqa: E402

from medadapt.app import Annotator, create_app, decode_rle, find_items, serve  # noqa: E402
from medadapt.app.learning import accept_hook, online_segmenter  # noqa: E402
from medadapt.app.server import annotate  # noqa: E402
from medadapt.cli import build_parser, main  # noqa: E402
from medadapt.core.errors import MedAdaptError  # noqa: E402
from medadapt.io.imaging import volume_slice  # noqa: E402


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def box_around(mask: np.ndarray, pad: int = 4) -> dict:
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return {"kind": "box", "x0": max(0, int(xs.min()) - pad), "y0": max(0, int(ys.min()) - pad),
            "x1": min(w - 1, int(xs.max()) + pad), "y1": min(h - 1, int(ys.max()) + pad)}


def two_objects(center, corner, seed, h=160, w=200):
    """A bright disc and a mid-grey square on a dark noisy background; returns (uint8 image, disc, square)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= 28**2
    square = np.zeros((h, w), bool)
    square[corner[0]: corner[0] + 34, corner[1]: corner[1] + 34] = True
    square &= ~disc
    image = np.where(disc, 210.0, np.where(square, 120.0, 30.0)) + rng.normal(0, 3, (h, w))
    return image.clip(0, 255).astype(np.uint8), disc, square


@pytest.fixture()
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    truth = {}
    for name, center, corner, seed in (("a.png", (60, 70), (100, 140), 0), ("b.png", (90, 120), (10, 10), 1),
                                       ("c.png", (80, 60), (20, 140), 2)):
        image, disc, square = two_objects(center, corner, seed)
        Image.fromarray(image).save(folder / name)
        truth[name] = (disc, square)
    return folder, truth


@pytest.fixture()
def volume(tmp_path):
    """A 64 x 72 x 6 CT-like volume with an off-centre bright cylinder, stored left-to-right (x flipped)."""
    rng = np.random.default_rng(3)
    xx, yy = np.mgrid[:64, :72]
    disc = (xx - 22) ** 2 + (yy - 40) ** 2 <= 12**2
    truth = np.repeat(disc[:, :, None], 6, axis=2)
    data = np.where(truth, 300.0, -50.0) + rng.normal(0, 5, truth.shape)
    affine = np.diag([-0.8, 0.7, 2.5, 1.0])
    affine[:3, 3] = [-20.0, 15.0, 40.0]
    folder = tmp_path / "ct"
    folder.mkdir()
    path = folder / "scan.nii.gz"
    nib.save(nib.Nifti1Image(data.astype(np.int16), affine), path)
    return path, truth, affine


def client(annotator: Annotator) -> TestClient:
    return TestClient(create_app(annotator), base_url="http://127.0.0.1")


def ids(api: TestClient) -> dict[str, str]:
    return {it["name"]: it["id"] for it in api.get("/api/state").json()["items"]}


def url(item: str, k: int, what: str) -> str:
    return f"/api/items/{item}/slices/{k}/{what}"


def test_listing_names_images_by_opaque_ids(images, litemedsam):
    folder, _ = images
    api = client(Annotator(litemedsam, folder, prefetch=False))
    state = api.get("/api/state").json()
    assert [it["name"] for it in state["items"]] == ["a.png", "b.png", "c.png"]
    for it in state["items"]:
        assert len(it["id"]) == 12 and int(it["id"], 16) >= 0 and it["kind"] == "image" and it["slices"] == 1
    assert state["classes"] == [{"name": "foreground", "value": 1, "learned": False}]
    assert state["position"] is None and state["labels_dir"] == str((folder / "labels").resolve())
    pixels = api.get(url(state["items"][0]["id"], 0, "pixels"))
    assert pixels.headers["X-Width"] == "200" and pixels.headers["X-Height"] == "160"
    assert np.frombuffer(pixels.content, "<f4").reshape(160, 200).max() > 150


def test_prompts_redraw_the_mask_and_undo_redecodes(images, litemedsam):
    folder, truth = images
    api = client(Annotator(litemedsam, folder, prefetch=False))
    a = ids(api)["a.png"]
    opened = api.post(url(a, 0, "open"), json={}).json()
    assert opened["source"] == "empty" and opened["labels"] == [] and not opened["blank"]
    disc = truth["a.png"][0]
    body = {"class_name": "foreground", "prompt": box_around(disc)}
    first = api.post(url(a, 0, "prompts"), json=body).json()
    assert first["source"] == "prompts" and dice(decode_rle(first["mask"]), disc) > 0.9
    assert 0 < first["decode_ms"] <= first["server_ms"]  # the server's figure holds the decoder's
    neg = {"class_name": "foreground", "prompt": {"kind": "point", "x": 95.0, "y": 30.0, "label": 0}}
    second = api.post(url(a, 0, "prompts"), json=neg).json()
    assert [p["kind"] for p in second["prompts"]] == ["box", "point"]
    scribble = {"kind": "scribble", "points": [[60, 55], [70, 60], [80, 65]], "label": 1}
    third = api.post(url(a, 0, "prompts"), json={"class_name": "foreground", "prompt": scribble}).json()
    assert [p["kind"] for p in third["prompts"]] == ["box", "point", "scribble"]
    assert dice(decode_rle(third["mask"]), disc) > 0.85
    api.post(url(a, 0, "undo"))
    undone = api.post(url(a, 0, "undo")).json()
    assert [p["kind"] for p in undone["prompts"]] == ["box"]
    assert np.array_equal(decode_rle(undone["mask"]), decode_rle(first["mask"]))  # the same inputs, decoded again
    cleared = api.post(url(a, 0, "clear")).json()
    assert cleared["source"] == "empty" and cleared["mask"] is None and cleared["prompts"] == []
    restored = api.post(url(a, 0, "undo")).json()  # a stray Escape is undone like any prompt
    assert [p["kind"] for p in restored["prompts"]] == ["box"]
    assert np.array_equal(decode_rle(restored["mask"]), decode_rle(first["mask"]))
    assert api.post(url(a, 0, "undo")).json()["prompts"] == []
    assert api.post(url(a, 0, "undo")).json()["prompts"] == []  # nothing left to undo: no error


def test_another_class_relabels_the_object_and_keeps_its_prompts(images, litemedsam):
    folder, truth = images
    api = client(Annotator(litemedsam, folder, prefetch=False))
    a = ids(api)["a.png"]
    api.post(url(a, 0, "open"), json={"class_name": "foreground"})
    drawn = api.post(url(a, 0, "prompts"), json={"class_name": "foreground",
                                                  "prompt": box_around(truth["a.png"][0])}).json()
    api.post("/api/classes", json={"name": "tumour"})
    changed = api.post(url(a, 0, "open"), json={"class_name": "tumour"}).json()  # the user picked another class
    assert changed["class_name"] == "tumour" and [p["kind"] for p in changed["prompts"]] == ["box"]
    assert changed["mask"] == drawn["mask"]
    # coming back to the slice (or reloading the page) with the list on another class: the object keeps its own
    for body in ({"class_name": "foreground", "keep": True}, {}):
        back = api.post(url(a, 0, "open"), json=body).json()
        assert back["class_name"] == "tumour" and back["mask"] == drawn["mask"]
    saved = api.post(url(a, 0, "accept"), json={"class_name": "tumour"}).json()["saved"]
    assert saved["class_name"] == "tumour"
    labels = np.asarray(Image.open(folder / "labels" / "a.png"))
    assert np.array_equal(labels == saved["value"], decode_rle(drawn["mask"]))


def test_accept_writes_a_label_png_and_keeps_earlier_classes(images, litemedsam):
    folder, truth = images
    calls = []
    annotator = Annotator(litemedsam, folder, prefetch=False, model_version=lambda: 7,
                          on_accept=lambda *args: calls.append(args))
    api = client(annotator)
    assert api.get("/api/state").json()["model_version"] == 7
    model = api.get("/api/model").json()
    assert model["model_version"] == 7 and model["learning"] is None and "items" not in model
    assert api.post("/api/classes", json={"name": "square"}).json() == {"name": "square", "value": 2}
    b = ids(api)["b.png"]
    disc, square = truth["b.png"]
    api.post(url(b, 0, "open"), json={"class_name": "foreground"})
    api.post(url(b, 0, "prompts"), json={"class_name": "foreground", "prompt": box_around(disc)})
    done = api.post(url(b, 0, "accept"), json={"class_name": "foreground"}).json()
    assert done["accepted"] and done["item_state"]["accepted"] == [0] and done["mask"] is None
    api.post(url(b, 0, "prompts"), json={"class_name": "square", "prompt": box_around(square, 2)})
    api.post(url(b, 0, "accept"), json={"class_name": "square"})
    saved = np.asarray(Image.open(folder / "labels" / "b.png"))
    assert set(np.unique(saved)) == {0, 1, 2}
    assert dice(saved == 1, disc) > 0.9 and dice(saved == 2, square) > 0.85  # the disc survived the second accept
    image_id, label_map, meta, embedding, prompts = calls[-1]
    assert image_id == b and np.array_equal(label_map, saved) and meta.original_size == (160, 200)
    assert embedding.ndim == 4 and prompts == [{"kind": "box", **{k: float(v) for k, v in box_around(square, 2).items()
                                                                  if k != "kind"}}]
    refused = api.post(url(b, 0, "accept"), json={"class_name": "square"})
    assert refused.status_code == 400 and "nothing to accept" in refused.json()["detail"]


def test_volume_slices_accumulate_in_a_nifti_with_the_input_affine(volume, litemedsam):
    path, truth, affine = volume
    api = client(Annotator(litemedsam, path, prefetch=False))
    (item,) = api.get("/api/state").json()["items"]
    assert item["kind"] == "volume" and item["slices"] == 6
    for k in (2, 4):
        opened = api.post(url(item["id"], k, "open"), json={}).json()
        assert (opened["width"], opened["height"]) == (64, 72)
        disc = volume_slice(truth[::-1], k, 2)  # load_volume's RAS+ layout flips the stored x axis
        answer = api.post(url(item["id"], k, "prompts"),
                          json={"class_name": "foreground", "prompt": box_around(disc)}).json()
        assert dice(decode_rle(answer["mask"]), disc) > 0.85
        api.post(url(item["id"], k, "accept"), json={"class_name": "foreground"})
    saved = nib.load(path.parent / "labels" / "scan.nii.gz")
    assert np.array_equal(saved.affine, nib.load(path).affine) and np.allclose(saved.affine, affine)
    labels = np.asarray(saved.dataobj)
    assert labels.shape == truth.shape and set(np.unique(labels)) == {0, 1}
    for k in range(6):
        if k in (2, 4):
            assert dice(labels[:, :, k] == 1, truth[:, :, k]) > 0.85  # slice 2 kept after slice 4 was accepted
        else:
            assert not labels[:, :, k].any()
    assert api.get("/api/state").json()["items"][0]["accepted"] == [2, 4]


def test_a_restarted_server_resumes_where_it_was(images, litemedsam):
    folder, truth = images
    first = Annotator(litemedsam, folder, prefetch=False)
    api = client(first)
    c = ids(api)["c.png"]
    api.post(url(c, 0, "open"), json={})
    api.post(url(c, 0, "prompts"), json={"class_name": "foreground", "prompt": box_around(truth["c.png"][0])})
    api.post(url(c, 0, "accept"), json={"class_name": "foreground"})
    session = json.loads((folder / "labels" / "annotate-session.json").read_text())
    assert session["accepted"] == {"c.png": {"slices": [0], "classes": ["foreground"]}}

    first.close()  # the server stops (its lock on the labels folder goes with it)
    again = client(Annotator(litemedsam, folder, prefetch=False))  # a new server on the same folder
    state = again.get("/api/state").json()
    assert state["position"] == {"item": c, "slice": 0}
    assert {it["name"]: it["accepted"] for it in state["items"]} == {"a.png": [], "b.png": [], "c.png": [0]}
    opened = again.post(url(c, 0, "open"), json={}).json()
    assert opened["accepted"] and [lab["value"] for lab in opened["labels"]] == [1]
    assert dice(decode_rle(opened["labels"][0]["mask"]), truth["c.png"][0]) > 0.9


def test_bad_requests_get_a_4xx_saying_what_to_fix(images, litemedsam):
    folder, _ = images
    api = client(Annotator(litemedsam, folder, prefetch=False))
    a = ids(api)["a.png"]
    api.post(url(a, 0, "open"), json={})
    point = {"kind": "point", "x": 10.0, "y": 10.0, "label": 1}

    def refused(response, status: int, text: str) -> None:
        assert response.status_code == status, response.text
        assert text in response.json()["detail"], response.json()

    refused(api.get(url("0123456789ab", 0, "pixels")), 404, "unknown image id")
    refused(api.post(url(a, 3, "open"), json={}), 404, "out of range")
    refused(api.post(url(a, -1, "prompts"), json={"class_name": "foreground", "prompt": point}), 404, "out of range")
    outside = {**point, "x": 500.0}
    refused(api.post(url(a, 0, "prompts"), json={"class_name": "foreground", "prompt": outside}), 400,
            "outside the image")
    bad_box = {"kind": "box", "x0": 50, "y0": 50, "x1": 40, "y1": 60}
    refused(api.post(url(a, 0, "prompts"), json={"class_name": "foreground", "prompt": bad_box}), 400, "x1 > x0")
    refused(api.post(url(a, 0, "prompts"), content=b'{"class_name": "foreground", "prompt": ',
                     headers={"Content-Type": "application/json"}), 400, "malformed JSON")
    refused(api.post(url(a, 0, "prompts"), json={"class_name": "liver", "prompt": point}), 400, "unknown class")
    refused(api.post(url(a, 0, "accept"), json={"class_name": "liver"}), 400, "unknown class")
    refused(api.post(url(a, 0, "prompts"), json={"class_name": "foreground", "prompt": {"kind": "point", "x": 3}}),
            422, "prompt.point.y")
    refused(api.post(url(a, 0, "prompts"), json={"class_name": "foreground", "prompt": {**point, "kind": "lasso"}}),
            422, "prompt")
    refused(api.post(url(a, 0, "prompts"), content=b'{"class_name": "foreground", "prompt": {"kind": "point", '
                     b'"x": NaN, "y": 3}}', headers={"Content-Type": "application/json"}), 422, "prompt.point.x")
    refused(api.post("/api/classes", json={"name": "  "}), 400, "class name")
    # a body past the limit is refused unread, declared (Content-Length) or streamed (chunked)
    huge = b'{"class_name": "' + b"x" * (3 << 20) + b'"}'
    refused(api.post(url(a, 0, "prompts"), content=huge, headers={"Content-Type": "application/json"}), 413,
            "too large")
    refused(api.post(url(a, 0, "prompts"), content=iter([huge[:2 << 20], huge[2 << 20:]]),
                     headers={"Content-Type": "application/json"}), 413, "too large")
    longest = [[10.123456789012345, 12.123456789012345]] * 20000  # the longest scribble the API takes passes
    assert api.post(url(a, 0, "prompts"), json={"class_name": "foreground", "prompt": {
        "kind": "scribble", "points": longest}}).status_code == 200
    api.post(url(a, 0, "undo"))
    refused(api.post(url(a, 0, "open"), json={"class_name": "foreground", "path": "/etc/passwd"}), 422, "path")
    for path in ("/static/../pyproject.toml", "/static/%2e%2e/pyproject.toml", "/static/..%2fpyproject.toml",
                 "/api/items/..%2f..%2fpyproject.toml/slices/0/pixels", "/api/items/%2fetc%2fpasswd/slices/0/pixels",
                 "/pyproject.toml", "/static/../../medadapt/app/server.py"):
        response = api.get(path)
        assert response.status_code == 404 and b"[project]" not in response.content, path
    for host in ("attacker.example", "127.0.0.1.attacker.example", "[::2]:8000", "", "[::1"):  # DNS rebinding
        assert api.get("/api/state", headers={"Host": host}).status_code == 400, host
    for host in ("localhost:8000", "[::1]:8000", "LOCALHOST"):  # every loopback name, IPv6 in brackets
        assert api.get("/api/state", headers={"Host": host}).status_code == 200, host
    # a page of another site open in the user's browser cannot change labels, objects or the model
    for headers in ({"Origin": "https://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}):
        refused(api.post(url(a, 0, "undo"), headers=headers), 403, "this app's own page")
    assert api.post(url(a, 0, "undo"), headers={"Origin": "http://127.0.0.1", "Sec-Fetch-Site": "same-origin"}
                    ).status_code == 200
    assert api.get("/static/app.js").status_code == 200 and "medadapt" in api.get("/").text


def test_an_adapter_names_the_classes_and_opens_each_image_with_its_proposal(images):
    from medadapt import Segmenter
    from medadapt.adapters import AdapterConfig, AutomaticConfig, apply
    from medadapt.foundation import build_backbone
    from medadapt.io.imaging import load_image

    backbone, _ = apply(build_backbone("litemedsam"), AdapterConfig(automatic=AutomaticConfig(["disc"], [3])))
    seg = Segmenter(backbone, device="cpu", precision="auto")  # optimised for inference, as from_pretrained does
    folder, truth = images
    api = client(Annotator(seg, folder, prefetch=False))
    assert api.get("/api/state").json()["classes"] == [{"name": "disc", "value": 3, "learned": True}]
    a = ids(api)["a.png"]
    opened = api.post(url(a, 0, "open"), json={"class_name": "disc"}).json()
    seg.set_image(load_image(folder / "a.png"))
    expected = seg.predict(classes=["disc"]).masks[0]
    assert expected.any() and opened["source"] == "proposal"  # untrained class tokens still answer something
    assert np.array_equal(decode_rle(opened["mask"]), expected)
    refined = api.post(url(a, 0, "prompts"),
                       json={"class_name": "disc", "prompt": box_around(truth["a.png"][0])}).json()
    assert refined["source"] == "prompts" and dice(decode_rle(refined["mask"]), truth["a.png"][0]) > 0.85
    assert api.post(url(a, 0, "undo")).json()["source"] == "proposal"  # back to where the slice opened
    api.post(url(a, 0, "accept"), json={"class_name": "disc"})
    assert np.array_equal(np.asarray(Image.open(folder / "labels" / "a.png")) == 3, expected)


def test_the_server_binds_loopback_by_default(tmp_path, capsys):
    from medadapt.app.server import is_loopback

    assert build_parser().parse_args(["annotate", "data"]).host == "127.0.0.1"
    # every spelling of this machine keeps the Host check; any other address is open to the network
    assert all(map(is_loopback, ("127.0.0.1", "127.0.0.2", "localhost", "LOCALHOST", "::1", "0:0:0:0:0:0:0:1")))
    assert not any(map(is_loopback, ("0.0.0.0", "::", "192.168.1.5", "example.org", "127.0.0.1.example.org")))
    for function in (annotate, serve):
        assert inspect.signature(function).parameters["host"].default == "127.0.0.1"
    assert main(["annotate", str(tmp_path / "missing")]) == 2
    assert "DATA not found" in capsys.readouterr().err


def test_online_learner_settings_reach_the_learner_and_bad_ones_fail_before_the_model_loads(images, monkeypatch,
                                                                                            capsys):
    import medadapt.app.server as server
    from medadapt.training import OnlineConfig

    folder, _ = images
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    seen = []

    def learner_stand_in(model, folder, **kw):  # records what the learner would be built with, then stops
        seen.append(kw["config"])
        raise MedAdaptError("stopped before the model loads")

    monkeypatch.setattr(server, "online_segmenter", learner_stand_in)
    assert main(["annotate", str(folder), "--port", port, "--online", "proposal_clicks=6", "lr=1.0e-4"]) == 2
    assert isinstance(seen[0], OnlineConfig) and seen[0].proposal_clicks == 6 and seen[0].lr == 1.0e-4
    assert main(["annotate", str(folder), "--port", port, "--online", "proposal_click=6"]) == 2
    assert "unknown key(s) ['proposal_click']" in capsys.readouterr().err and len(seen) == 1
    assert main(["annotate", str(folder), "--port", port, "--no-learn", "--online", "proposal_clicks=6"]) == 2
    assert "--no-learn" in capsys.readouterr().err and len(seen) == 1
    assert main(["annotate", str(folder), "--port", port]) == 2
    assert seen[-1] is None  # no settings: the learner's defaults


def test_the_next_image_is_encoded_in_the_background(images, litemedsam):
    folder, _ = images
    annotator = Annotator(litemedsam, folder, prefetch=True, prefetch_idle_s=0.05)
    try:
        items = annotator.source.items
        annotator.open(items[0].id, 0)
        deadline = time.monotonic() + 60
        while (items[1].id, 0) not in annotator.cache and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (items[1].id, 0) in annotator.cache and annotator.cache.encoded == 2
        annotator.prefetcher.stop()
        annotator.open(items[1].id, 0)
        assert annotator.cache.encoded == 2  # no encoder run: the embedding was waiting
    finally:
        annotator.close()


def test_a_click_is_answered_while_the_next_image_encodes_and_opening_it_waits_for_that_encoding(images, litemedsam):
    """The prefetcher encodes without the model lock (the encoder is frozen): a prompt on the open image is
    decoded at once, and opening the image being encoded waits for its embedding instead of encoding it again."""
    folder, truth = images
    annotator = Annotator(litemedsam, folder, prefetch=True, prefetch_idle_s=0.5)
    encoder = litemedsam.backbone.image_encoder
    started, release, finished = threading.Event(), threading.Event(), threading.Event()
    real = encoder.forward

    def held(x):  # the real encoder, finishing only when the test lets it (or after 30 s)
        started.set()
        release.wait(30)
        out = real(x)
        finished.set()
        return out

    try:
        a, b = annotator.source.items[:2]
        annotator.open(a.id, 0)
        encoder.forward = held
        assert started.wait(60), "the next image was never encoded in the background"
        answer = annotator.prompt(a.id, 0, "foreground", box_around(truth["a.png"][0]))
        assert not finished.is_set(), "the click waited for the background encoding"
        assert dice(decode_rle(answer["mask"]), truth["a.png"][0]) > 0.9
        release.set()
        opened = annotator.open(b.id, 0)
        assert not opened["blank"] and annotator.cache.encoded == 2  # a, then b once, by the prefetcher
    finally:
        release.set()
        del encoder.forward  # back to the class's method: the session's model is shared
        annotator.close()


def _png_dataset(root, cases, masks: dict[str, str] | None = None):
    """``root/images/CASE.png`` (8 x 8 ramps) and ``root/masks/NAME`` (blank) for each ``masks`` CASE: NAME."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for case in cases:
        Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(root / "images" / f"{case}.png")
    for name in (masks or {}).values():
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "masks" / name)
    return root


def test_datasets_and_series_keep_labels_where_their_layout_does(tmp_path):
    root = _png_dataset(tmp_path / "set", ("p1", "p2"), {"p1": "p1_mask.png"})
    source = find_items(root)
    assert source.layout == "dataset" and source.labels_dir == root.resolve() / "masks"
    assert [it.label_path.name for it in source.items] == ["p1_mask.png", "p2.png"]
    nn = tmp_path / "nn"
    (nn / "imagesTr").mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.random.rand(8, 8, 3).astype(np.float32), np.eye(4)), nn / "imagesTr" / "c1_0000.nii.gz")
    (item,) = find_items(nn).items
    assert item.label_path == nn.resolve() / "labelsTr" / "c1.nii.gz" and item.slices == 3 and item.is_volume
    other = find_items(nn, labels=tmp_path / "mine")
    assert other.items[0].label_path == (tmp_path / "mine" / "c1.nii.gz").resolve()


def test_accepted_masks_train_the_served_model_and_a_restart_resumes(images, tmp_path):
    folder, truth = images
    seg, learner = online_segmenter("litemedsam", tmp_path / "online", device="cpu",
                                    config={"steps_per_sample": 2, "batch_size": 2})
    annotator = Annotator(seg, folder, lock=learner.lock, model_version=lambda: learner.version, prefetch=False)
    annotator.on_accept = accept_hook(learner, annotator.classes)
    api = client(annotator)
    try:
        assert seg.classes == []  # no adapter yet: the first accepted mask creates the class
        for name in ("a.png", "b.png"):
            item = ids(api)[name]
            disc, _ = truth[name]
            api.post(url(item, 0, "open"), json={"class_name": "foreground"})
            api.post(url(item, 0, "prompts"), json={"class_name": "foreground", "prompt": box_around(disc)})
            done = api.post(url(item, 0, "accept"), json={"class_name": "foreground"}).json()
            assert done["accepted"] and "on_accept_error" not in done
        assert learner.wait_idle(timeout=300)
        assert seg.classes == ["foreground"] and len(learner.buffer) == 2 and learner.version >= 1
        assert api.get("/api/state").json()["model_version"] == learner.version
        sample = learner.buffer.get(0)
        assert set(np.unique(sample.target.numpy())) <= {0, 1} and sample.target.sum() > 0
    finally:
        annotator.close()
        learner.stop()
        learner.save()
    again, resumed = online_segmenter("litemedsam", tmp_path / "online", device="cpu")
    try:
        assert again.classes == ["foreground"] and len(resumed.buffer) == 2
    finally:
        resumed.stop()


def test_the_app_stops_cleanly_with_nothing_learned_and_saves_or_says_why_not(images, tmp_path, monkeypatch):
    """Stopping the app stops the learner and saves what it learned: with nothing accepted there is nothing to
    save and no error; a save that fails (a full disk) is said, with where the samples wait; a worker that died
    on an error does not keep what it learned before from being saved."""
    import medadapt.app.server as server
    from medadapt.app.learning import stop_learning
    from medadapt.training import OnlineLearner

    folder, truth = images
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(server, "serve", lambda *a, **k: None)  # the user stops the server at once
    said = []
    server.annotate(folder, port=port, log=said.append)
    assert not any(line.startswith("error") for line in said) and not any("saved to" in line for line in said)

    seg, learner = online_segmenter("litemedsam", tmp_path / "online", device="cpu",
                                    config={"steps_per_sample": 1, "batch_size": 1, "prompted": []})
    image = np.asarray(Image.open(folder / "a.png"))
    seg.set_image(image)
    emb, meta = seg.embedding()
    learner.add(emb, meta, truth["a.png"][0], ["foreground"])
    assert learner.wait_idle(timeout=240)

    def no_space(self, path=None):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(OnlineLearner, "save", no_space)
        problem = stop_learning(learner, said.append)
    assert not learner.running
    assert "could not save the online learner's model" in problem and "No space left on device" in problem
    assert str(learner.buffer.folder) in problem

    stop = learner.stop
    monkeypatch.setattr(learner, "stop", lambda: (stop(), (_ for _ in ()).throw(
        MedAdaptError("the online learner's worker stopped on an error: boom"))))
    assert stop_learning(learner, said.append) == "the online learner's worker stopped on an error: boom"
    assert (tmp_path / "online" / "adapter" / "adapter.json").is_file() and "saved to" in said[-1]


def test_with_a_depth_adapter_volume_slices_carry_their_neighbours_and_it_learns_online(volume, tmp_path):
    """A volume slice is decoded with its neighbours' embeddings, the learner keeps them in its buffer, and the
    depth adapter (zero-initialised) trains and is published into the serving model."""
    from medadapt.adapters import AdapterConfig, AutomaticConfig, DepthAdapterConfig, apply, save_adapter
    from medadapt.foundation import build_backbone

    path, truth, _ = volume
    adapted, _ = apply(build_backbone("litemedsam"), AdapterConfig(
        train=["mask_decoder"], depth=DepthAdapterConfig(hidden=8, neighbours=1),
        automatic=AutomaticConfig(class_names=["foreground"], label_values=[1])))
    save_adapter(adapted, tmp_path / "adapter")
    seg, learner = online_segmenter("litemedsam", tmp_path / "online", adapter=tmp_path / "adapter", device="cpu",
                                    config={"steps_per_sample": 2, "batch_size": 1, "prompted": []})
    assert seg.backbone.depth_slices == 3 and not seg.backbone.depth_adapter.up.weight.any()
    annotator = Annotator(seg, path, lock=learner.lock, model_version=lambda: learner.version, prefetch=False)
    annotator.on_accept = accept_hook(learner, annotator.classes)
    api = client(annotator)
    try:
        (item,) = api.get("/api/state").json()["items"]
        api.post(url(item["id"], 0, "open"), json={"class_name": "foreground"})
        assert annotator.cache.encoded == 2  # slice 0 and its neighbour above; below it, slice 0 repeats
        disc = volume_slice(truth[::-1], 0, 2)
        api.post(url(item["id"], 0, "prompts"), json={"class_name": "foreground", "prompt": box_around(disc)})
        done = api.post(url(item["id"], 0, "accept"), json={"class_name": "foreground"}).json()
        assert done["accepted"] and "on_accept_error" not in done
        assert learner.wait_idle(timeout=300) and learner.error is None
        stack = learner.buffer.get(0).embedding
        assert stack.shape == (3, seg.backbone.embed_dim, 64, 64) and torch.equal(stack[0], stack[1])
        assert not torch.equal(stack[1], stack[2])
        assert seg.backbone.depth_adapter.up.weight.abs().sum() > 0  # trained and published
    finally:
        annotator.close()
        learner.stop()


def test_answers_carry_guidance_where_the_model_is_least_sure(images, litemedsam):
    """The answer to a box shows an unsure region along the object's edge, with a point in it; a prompt that
    changes the answer moves guidance to where the two answers disagree."""
    from scipy import ndimage

    folder, truth = images
    api = client(Annotator(litemedsam, folder, prefetch=False))
    a = ids(api)["a.png"]
    assert api.post(url(a, 0, "open"), json={}).json()["guidance"] is None  # nothing answered yet
    disc = truth["a.png"][0]
    answer = api.post(url(a, 0, "prompts"), json={"class_name": "foreground", "prompt": box_around(disc)}).json()
    g = answer["guidance"]
    region = decode_rle(g["region"])
    edge = ndimage.distance_transform_edt(disc) + ndimage.distance_transform_edt(~disc) <= 4
    assert region.any() and (region & edge).sum() / region.sum() > 0.8
    x, y = g["point"]
    assert region[int(round(y)), int(round(x))] and 0.5 <= g["uncertainty"] <= 1.0
    cut = {"kind": "point", "x": 70.0, "y": 60.0, "label": 0}  # a negative click at the disc's centre
    changed = api.post(url(a, 0, "prompts"), json={"class_name": "foreground", "prompt": cut}).json()
    before, after = decode_rle(answer["mask"]), decode_rle(changed["mask"])
    flipped = before != after
    assert flipped.sum() > 10  # the click changed the answer, and guidance shows (part of) the change
    assert (decode_rle(changed["guidance"]["region"]) & flipped).any()


def test_serving_threads_leave_the_learner_its_core(images, litemedsam):
    import torch

    from medadapt import MedAdaptError
    from medadapt.app.server import serving_threads, threads_beside
    from medadapt.training import OnlineConfig

    assert serving_threads(0) is None  # the worker takes the process default: nothing to leave

    class Learner:  # what threads_beside reads of an OnlineLearner
        config, training = OnlineConfig(worker_threads=1), False

    pick = threads_beside(Learner)
    assert pick() == torch.get_num_threads()
    Learner.training = True
    assert pick() == max(1, torch.get_num_threads() - 1)
    assert serving_threads(1) == max(1, torch.get_num_threads() - 1)
    with pytest.raises(MedAdaptError, match="threads must be"):
        Annotator(litemedsam, images[0], threads=0)
    before = torch.get_num_threads()
    annotator = Annotator(litemedsam, images[0], threads=1, prefetch=False)
    try:
        assert not annotator.busy()
        api = client(annotator)
        item = ids(api)["a.png"]
        assert api.post(url(item, 0, "open"), json={}).status_code == 200
        assert annotator.busy(60.0) and not annotator.busy(0.0)
        with annotator._using():  # model work running (or waiting for the lock) counts however long it takes
            assert annotator.busy(0.0)
        assert not annotator.busy(0.0)
    finally:
        annotator.close()
        torch.set_num_threads(before)


def test_scribbles_of_accepted_objects_are_kept_as_strokes_training_reads(images, litemedsam):
    """An accepted object's scribbles go to LABELS/strokes/NAME: its class value on its strokes, 0 on background
    strokes, 255 where nobody drew; a recipe with scribbles: files reads them back as the same strokes."""
    from medadapt.data import DataConfig, SliceDataset, discover_cases, split_cases
    from medadapt.prompts.scribbles import rasterize_strokes

    folder, truth = images
    api = client(Annotator(litemedsam, folder, prefetch=False))
    api.post("/api/classes", json={"name": "square"})
    a = ids(api)["a.png"]
    disc, square = truth["a.png"]
    api.post(url(a, 0, "prompts"), json={"class_name": "square", "prompt": box_around(square, 2)})
    assert api.post(url(a, 0, "accept"), json={"class_name": "square"}).json()["saved"]["strokes"] is False
    inside = {"kind": "scribble", "points": [[60, 55], [70, 60], [80, 65]], "label": 1}
    outside = {"kind": "scribble", "points": [[10, 150], [40, 150]], "label": 0}
    across = {"kind": "scribble", "points": [[120, 116], [170, 116]], "label": 0}  # "not the disc", over the square
    for prompt in (box_around(disc), inside, outside, across):
        api.post(url(a, 0, "prompts"), json={"class_name": "foreground", "prompt": prompt})
    done = api.post(url(a, 0, "accept"), json={"class_name": "foreground"}).json()
    assert done.get("saved", {}).get("strokes") is True, done
    strokes = np.asarray(Image.open(folder / "labels" / "strokes" / "a.png"))
    drawn = rasterize_strokes([(inside["points"], 1), (outside["points"], 0), (across["points"], 0)], disc.shape)
    labels = np.asarray(Image.open(folder / "labels" / "a.png"))
    assert ((drawn == 0) & (labels == 2)).any()  # the stroke does cross the accepted square
    assert np.array_equal(strokes == 1, drawn == 1)
    assert np.array_equal(strokes == 0, (drawn == 0) & (labels == 0))  # the square's pixels stay unmarked
    assert set(np.unique(strokes)) == {0, 1, 255}  # the square's box drew no stroke
    drawn[(drawn == 0) & (labels != 0)] = -1
    cfg = DataConfig.from_dict({"root": str(folder), "layout": "folder", "images": ".", "labels": "labels/strokes",
                                "classes": ["foreground"], "labeled": ["a"], "scribbles": "files",
                                "unlabeled_value": 255})
    (read,) = SliceDataset(split_cases(cfg, discover_cases(cfg))["labeled"], cfg)
    assert np.array_equal(read.label == 1, drawn == 1) and np.array_equal(read.label == 0, drawn == 0)
    assert (read.label == -1).sum() == (drawn == -1).sum()


def test_strokes_on_a_volume_slice_go_into_a_stroke_volume_in_its_geometry(volume, litemedsam):
    from medadapt.io.imaging import load_volume
    from medadapt.prompts.scribbles import rasterize_strokes

    path, truth, _ = volume
    api = client(Annotator(litemedsam, path, prefetch=False))
    (item,) = api.get("/api/state").json()["items"]
    disc = volume_slice(truth[::-1], 2, 2)
    stroke = {"kind": "scribble", "points": [[30, 20], [36, 24]], "label": 1}
    for prompt in (box_around(disc), stroke):
        api.post(url(item["id"], 2, "prompts"), json={"class_name": "foreground", "prompt": prompt})
    assert api.post(url(item["id"], 2, "accept"), json={"class_name": "foreground"}).json()["saved"]["strokes"]
    saved = nib.load(path.parent / "labels" / "strokes" / "scan.nii.gz")
    assert np.array_equal(saved.affine, nib.load(path).affine) and saved.shape == truth.shape
    data, _ = load_volume(path.parent / "labels" / "strokes" / "scan.nii.gz")
    plane = volume_slice(data, 2, 2)
    drawn = rasterize_strokes([(stroke["points"], 1)], disc.shape)
    assert np.array_equal(plane == 1, drawn == 1) and (plane[drawn == -1] == 255).all()
    assert (volume_slice(data, 3, 2) == 255).all()  # untouched slices: nobody drew there


# ------------------------------------------------------------------------------------------ refusals and repairs
def test_a_label_file_that_is_an_input_image_is_refused_at_startup(tmp_path):
    """``--labels`` naming the images' own folder would make Accept overwrite the image: refused in every layout."""
    scans = tmp_path / "scans"
    scans.mkdir()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(scans / "scan.png")
    with pytest.raises(MedAdaptError, match="scan.png, the image itself: accepting would overwrite the image; give "
                                            "another --labels folder"):
        find_items(scans / "scan.png", labels=scans)  # one image file, --labels its folder
    ds = _png_dataset(tmp_path / "ds", ("case1",))
    with pytest.raises(MedAdaptError, match="the image itself"):
        find_items(ds, labels=ds / "images")  # a dataset, --labels its images folder
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "scan.png").hardlink_to(scans / "scan.png")  # the same file under another path
    with pytest.raises(MedAdaptError, match="the image itself"):
        find_items(scans / "scan.png", labels=tmp_path / "linked")
    assert find_items(scans / "scan.png").items[0].label_path == (scans / "labels" / "scan.png").resolve()


def test_a_binary_0_255_mask_stays_binary_and_keeps_its_foreground(tmp_path, litemedsam):
    """A dataset of 0/255 masks (read by training as foreground): Accept paints 255 beside the 255s, the page
    shows them as the foreground class, and the learner is taught the old annotation as foreground too."""
    from medadapt.data.datasets import remap_labels

    ds = tmp_path / "kvasir"
    (ds / "images").mkdir(parents=True)
    (ds / "masks").mkdir()
    image, disc, square = two_objects((60, 70), (100, 140), 0)
    Image.fromarray(image).save(ds / "images" / "case1.png")
    Image.fromarray((square * 255).astype(np.uint8)).save(ds / "masks" / "case1.png")
    taught = []
    api = client(Annotator(litemedsam, ds, prefetch=False, on_accept=lambda *a: taught.append(a[1])))
    i = list(ids(api).values())[0]
    opened = api.post(url(i, 0, "open"), json={}).json()
    assert [label["value"] for label in opened["labels"]] == [1]  # the existing square, as the foreground class
    api.post(url(i, 0, "prompts"), json={"class_name": "foreground", "prompt": box_around(disc)})
    assert api.post(url(i, 0, "accept"), json={"class_name": "foreground"}).json()["saved"]["value"] == 1
    stored = np.asarray(Image.open(ds / "masks" / "case1.png")).astype(np.int64)
    assert set(np.unique(stored)) == {0, 255} and (stored[square] == 255).all()
    target = remap_labels(stored, [("foreground", 1)], binary_255=True)
    assert target[square].all() and dice(target[disc] == 1, np.ones(disc.sum(), bool)) > 0.85
    assert set(np.unique(taught[0])) == {0, 1} and taught[0][square].all()


def test_classes_whose_label_values_clash_are_refused_naming_them(tmp_path, litemedsam):
    """An adapter's classes and dataset.json's (or classes made in an earlier run of the app) sharing a label value, or
    one name with two values, are refused when the app starts: label files could not tell them apart."""
    from medadapt import Segmenter
    from medadapt.adapters import AdapterConfig, AutomaticConfig, apply
    from medadapt.foundation import build_backbone

    ds = tmp_path / "ds"
    (ds / "imagesTr").mkdir(parents=True)
    Image.fromarray(two_objects((60, 70), (100, 140), 0)[0]).save(ds / "imagesTr" / "case1.png")
    (ds / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1, "spleen": 2}}))
    backbone, _ = apply(build_backbone("litemedsam"),
                        AdapterConfig(automatic=AutomaticConfig(["kidney", "tumour"], [1, 3])))
    seg = Segmenter(backbone, device="cpu")
    with pytest.raises(MedAdaptError, match=r"classes 'kidney' \(the adapter\) and 'liver' \(dataset.json\) both "
                                            "have label value 1.*give an --adapter trained with dataset.json"):
        Annotator(seg, ds, prefetch=False)
    backbone.adapter_config.automatic.class_names = ["liver"]
    backbone.adapter_config.automatic.label_values = [3]
    with pytest.raises(MedAdaptError, match="class 'liver' has label value 3 in the adapter but 1 in dataset.json"):
        Annotator(seg, ds, prefetch=False)
    backbone.adapter_config.automatic.label_values = [1]
    assert Annotator(seg, ds, prefetch=False).classes() == {"liver": 1, "spleen": 2}  # agreeing classes: fine

    folder = tmp_path / "plain"
    folder.mkdir()
    Image.fromarray(two_objects((60, 70), (100, 140), 0)[0]).save(folder / "a.png")
    first = Annotator(litemedsam, folder, prefetch=False)
    assert first.add_class("organ") == {"name": "organ", "value": 2}  # foreground is 1
    first.close()
    backbone.adapter_config.automatic.class_names = ["kidney", "tumour"]
    backbone.adapter_config.automatic.label_values = [1, 2]
    with pytest.raises(MedAdaptError, match=r"classes 'tumour' \(the adapter\) and 'organ' \(made in the app.*give "
                                            "another --labels folder"):
        Annotator(seg, folder, prefetch=False)
    Annotator(litemedsam, folder, prefetch=False).close()  # the refusal left the labels folder free


def test_objects_accepted_as_the_implicit_foreground_hold_its_value_against_a_later_adapter(images, litemedsam):
    """With no class named anywhere the app offers ``foreground`` = 1; once a label file holds it, an adapter that
    gives value 1 to another class is refused (it would read those objects as its own class)."""
    from medadapt import Segmenter
    from medadapt.adapters import AdapterConfig, AutomaticConfig, apply
    from medadapt.foundation import build_backbone

    folder, truth = images
    first = Annotator(litemedsam, folder, prefetch=False)
    api = client(first)
    a = ids(api)["a.png"]
    api.post(url(a, 0, "prompts"), json={"class_name": "foreground", "prompt": box_around(truth["a.png"][0])})
    assert api.post(url(a, 0, "accept"), json={"class_name": "foreground"}).json()["saved"]["value"] == 1
    first.close()
    backbone, _ = apply(build_backbone("litemedsam"), AdapterConfig(automatic=AutomaticConfig(["kidney"], [1])))
    with pytest.raises(MedAdaptError, match=r"classes 'foreground' \(made in the app.*and 'kidney' \(the adapter\)|"
                                            r"classes 'kidney' \(the adapter\) and 'foreground' \(made in the app"):
        Annotator(Segmenter(backbone, device="cpu"), folder, prefetch=False)
    again = Annotator(litemedsam, folder, prefetch=False)
    assert again.classes() == {"foreground": 1}
    again.close()


def test_a_failing_autosave_keeps_the_worker_training_and_the_state_says_why(images, tmp_path, monkeypatch):
    """A save that fails (a full disk for a moment) is logged and shown in the state, and training goes on; a
    worker that died on an error is shown in the state and in the answer of the next Accept."""
    import medadapt.training.online as online

    folder, truth = images
    seg, learner = online_segmenter("litemedsam", tmp_path / "online", device="cpu",
                                    config={"steps_per_sample": 1, "batch_size": 1, "prompted": []})
    annotator = Annotator(seg, folder, lock=learner.lock, model_version=lambda: learner.version, prefetch=False)
    annotator.on_accept = accept_hook(learner, annotator.classes)
    api = client(annotator)
    real, fails = online.save_adapter, [1]

    def flaky(*args, **kwargs):
        if fails:
            fails.pop()
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(online, "save_adapter", flaky)

    def accept(name: str) -> dict:
        item = ids(api)[name]
        api.post(url(item, 0, "open"), json={"class_name": "foreground"})
        api.post(url(item, 0, "prompts"), json={"class_name": "foreground", "prompt": box_around(truth[name][0])})
        return api.post(url(item, 0, "accept"), json={"class_name": "foreground"}).json()

    try:
        assert api.get("/api/state").json()["learning"]["running"]
        assert "on_accept_error" not in accept("a.png") and learner.wait_idle(timeout=240)
        state = api.get("/api/state").json()["learning"]
        assert state["running"] and state["error"] is None and "No space left on device" in state["save_error"]
        assert "on_accept_error" not in accept("b.png") and learner.wait_idle(timeout=240)
        state = api.get("/api/state").json()["learning"]
        assert state["running"] and state["steps"] == 2 and state["save_error"] is None  # trained, and saved
        model = api.get("/api/model").json()  # what the page polls: the same, without the item listing
        assert model["learning"] == state and model["model_version"] == learner.version

        monkeypatch.setattr(learner, "_step", lambda: (_ for _ in ()).throw(RuntimeError("boom")))
        accept("c.png")  # the worker dies on this sample's step (its answer may say so already)
        assert learner.wait_idle(timeout=60)
        state = api.get("/api/state").json()["learning"]
        assert not state["running"] and "stopped on an error: RuntimeError: boom" in state["error"]
        answer = accept("a.png")
        assert answer["accepted"] and "stopped on an error" in answer["on_accept_error"]
        assert "restart the app to train on it" in answer["on_accept_error"]
    finally:
        annotator.close()
        with contextlib.suppress(MedAdaptError):  # stop() says what stopped the worker (tested elsewhere)
            learner.stop()


def test_an_adapter_other_than_the_one_the_online_checkpoint_started_from_is_refused(images, tmp_path):
    """``--adapter RUN`` on labels whose online checkpoint started elsewhere is refused, not silently dropped; the
    same RUN again resumes the checkpoint."""
    from medadapt.adapters import AdapterConfig, AutomaticConfig, apply, save_adapter
    from medadapt.foundation import build_backbone

    folder, truth = images
    for run, names in (("run_a", ["disc"]), ("run_b", ["liver", "spleen"])):
        auto = AutomaticConfig(names, [1, 2][: len(names)])
        backbone, _ = apply(build_backbone("litemedsam"), AdapterConfig(train=["mask_decoder"], automatic=auto))
        save_adapter(backbone, tmp_path / run / "adapter")
    image = np.asarray(Image.open(folder / "a.png"))

    def session(online, adapter=None, **log):
        seg, learner = online_segmenter("litemedsam", online, adapter=adapter, device="cpu",
                                        config={"steps_per_sample": 0}, **log)
        seg.set_image(image)
        emb, meta = seg.embedding()
        learner.add(emb, meta, truth["a.png"][0], ["disc"], image_id="a")
        learner.stop()
        learner.save()
        return seg

    session(tmp_path / "online", tmp_path / "run_a")
    with pytest.raises(MedAdaptError, match="--adapter .*run_b was given, but .*online holds the model learned in an "
                                            "earlier run of the app.*started from .*run_a.*drop --adapter to resume it, or "
                                            "rename or remove"):
        online_segmenter("litemedsam", tmp_path / "online", adapter=tmp_path / "run_b", device="cpu")
    said = []
    again = session(tmp_path / "online", tmp_path / "run_a", log=said.append)  # the same command again: resumes
    assert again.classes == ["disc"] and any("resuming the online learner" in line for line in said)
    session(tmp_path / "bare")  # started without an adapter
    with pytest.raises(MedAdaptError, match="started without that adapter"):
        online_segmenter("litemedsam", tmp_path / "bare", adapter=tmp_path / "run_a", device="cpu")


def test_a_second_server_on_the_same_labels_folder_is_refused(images, litemedsam, tmp_path):
    """Two servers on one labels folder would overwrite each other's session file and replay buffer: the second,
    in this process or another, is refused until the first stops."""
    import subprocess
    import sys

    from medadapt.app.store import LabelsLock

    folder, _ = images
    first = Annotator(litemedsam, folder, prefetch=False)
    with pytest.raises(MedAdaptError, match="another medadapt annotate .*is using the labels folder .*labels: stop "
                                            "it first, or give another --labels folder"):
        Annotator(litemedsam, folder, prefetch=False)
    Annotator(litemedsam, folder, labels=tmp_path / "mine", prefetch=False).close()  # other labels: fine
    first.close()
    Annotator(litemedsam, folder, prefetch=False).close()

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from medadapt.app.store import LabelsLock; "
                               "held = LabelsLock(sys.argv[1]); print('held', flush=True); time.sleep(60)",
                               str(folder / "labels")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(MedAdaptError, match=f"another medadapt annotate \\(process {holder.pid}\\)"):
            Annotator(litemedsam, folder, prefetch=False)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with pytest.raises(MedAdaptError, match="another medadapt annotate"):
            annotate(folder, port=port, log=lambda line: None)  # refused before the model loads
    finally:
        holder.kill()
        holder.wait()
    LabelsLock(folder / "labels").release()  # the lock went with the process


def test_a_session_annotated_along_one_axis_refuses_another(volume, litemedsam):
    """Slices are recorded by number: a restart with another --axis would mark and train the wrong planes."""
    path, truth, _ = volume
    first = Annotator(litemedsam, path, prefetch=False)
    api = client(first)
    vid = list(ids(api).values())[0]
    api.post(url(vid, 2, "open"), json={})
    disc = volume_slice(truth[::-1], 2, 2)  # load_volume's RAS+ layout flips the stored x axis
    api.post(url(vid, 2, "prompts"), json={"class_name": "foreground", "prompt": box_around(disc)})
    assert api.post(url(vid, 2, "accept"), json={"class_name": "foreground"}).status_code == 200
    first.close()
    assert json.loads((path.parent / "labels" / "annotate-session.json").read_text())["axis"] == 2
    with pytest.raises(MedAdaptError, match="annotated slice by slice along --axis 2: start with --axis 2, or give "
                                            "another --labels folder"):
        Annotator(litemedsam, path, axis=0, prefetch=False)
    Annotator(litemedsam, path, axis=2, prefetch=False).close()


@pytest.mark.parametrize("bad", [{"classes": {"organ": "two"}}, {"classes": {"organ": None}},
                                 {"classes": {"organ": True}}, {"accepted": {"a.png": ["0"]}},
                                 {"accepted": {"a.png": {"slices": ["x"]}}}, {"accepted": {"a.png": {"classes": [1]}}},
                                 {"axis": 5}])
def test_a_session_file_with_bad_entries_is_refused_at_startup(images, litemedsam, bad):
    folder, _ = images
    (folder / "labels").mkdir()
    (folder / "labels" / "annotate-session.json").write_text(json.dumps(bad))
    with pytest.raises(MedAdaptError, match="annotate-session.json holds .*; fix it or delete it"):
        Annotator(litemedsam, folder, prefetch=False)


def test_label_values_no_class_has_are_taught_as_background():
    """A negative value (-1 'ignore' in a NIfTI label volume) or an unknown one is background, not the last
    class by wrap-around."""
    seen = {}

    class Capture:
        def add(self, emb, meta, label, names, **kw):
            seen.update(label=label, names=names)

    hook = accept_hook(Capture(), lambda: {"liver": 1, "tumour": 2})
    hook("case:3", np.array([[0, 1, 2], [-1, -2, 0]]), None, None, [])
    assert seen["names"] == ["liver", "tumour"] and seen["label"].tolist() == [[0, 1, 2], [0, 0, 0]]
    hook("case:4", np.array([[0, 1, 2], [-1, 5, 7]]), None, None, [])
    assert seen["label"].tolist() == [[0, 1, 2], [0, 0, 0]]


def test_a_dataset_whose_label_files_the_app_cannot_write_is_refused(tmp_path):
    ds = _png_dataset(tmp_path / "ds", ("case1", "case2"), {"case1": "case1.tif"})
    with pytest.raises(MedAdaptError, match=r"case1.tif is a \.tif file, which the app cannot write back .*convert "
                                            "the dataset's label files to PNG.*or give --labels DIR"):
        find_items(ds)
    assert [it.label_path.name for it in find_items(ds, labels=tmp_path / "new").items] == ["case1.png", "case2.png"]


def test_prompts_per_object_are_bounded(images, litemedsam, monkeypatch):
    """Every prompt decodes the object with all of its prompts: past the limits a prompt gets 400 saying to
    accept the object or start it again, and undo makes room."""
    import medadapt.app.session as session

    folder, truth = images
    api = client(Annotator(litemedsam, folder, prefetch=False))
    a = ids(api)["a.png"]
    api.post(url(a, 0, "open"), json={})
    rng = np.random.default_rng(0)
    stroke = {"kind": "scribble", "points": rng.uniform([0, 0], [199, 159], (20000, 2)).round(1).tolist()}
    for _ in range(5):  # 100000 points
        assert api.post(url(a, 0, "prompts"), json={"class_name": "foreground", "prompt": stroke}).status_code == 200
    refused = api.post(url(a, 0, "prompts"), json={"class_name": "foreground", "prompt": stroke})
    assert refused.status_code == 400 and "100000 points" in refused.json()["detail"]
    assert "accept it, or undo or clear it and start again" in refused.json()["detail"]
    click = {"class_name": "foreground", "prompt": {"kind": "point", "x": 70, "y": 60, "label": 1}}
    assert api.post(url(a, 0, "prompts"), json=click).status_code == 200  # clicks still fit
    monkeypatch.setattr(session, "MAX_PROMPTS", 6)
    monkeypatch.setattr(session, "MAX_SCRIBBLES", 1)
    assert api.post(url(a, 0, "prompts"), json=click).status_code == 400  # 6 prompts held
    api.post(url(a, 0, "clear"))
    short = {"class_name": "foreground", "prompt": {"kind": "scribble", "points": [[60, 60], [80, 70]]}}
    assert api.post(url(a, 0, "prompts"), json=short).status_code == 200
    assert "1 scribbles" in api.post(url(a, 0, "prompts"), json=short).json()["detail"]
    api.post(url(a, 0, "undo"))
    assert api.post(url(a, 0, "prompts"), json=short).status_code == 200


def test_a_relabelled_object_falls_back_to_its_new_class_proposal(tmp_path):
    from medadapt import Segmenter
    from medadapt.adapters import AdapterConfig, AutomaticConfig, apply
    from medadapt.app.objects import Answer
    from medadapt.foundation import build_backbone

    (tmp_path / "img").mkdir()
    img = (np.random.default_rng(0).random((64, 64)) * 50).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "img" / "a.png")
    backbone, _ = apply(build_backbone("tiny_sam_vit"), AdapterConfig(train=["mask_decoder"], automatic=AutomaticConfig(
        ["A", "B"], [1, 2])))
    seg = Segmenter(backbone, device="cpu")
    ann = Annotator(seg, tmp_path / "img", labels=tmp_path / "labels", prefetch=False)
    half = {"A": np.s_[:, :32], "B": np.s_[:, 32:]}  # each class's proposal: a half of the image

    def proposal(encoded, name):
        m = np.zeros((64, 64), bool)
        m[half[name]] = True
        return Answer(m, np.zeros((seg.backbone.processor.mask_size,) * 2, np.float32), 1.0)

    ann._proposal = proposal
    item = ann.source.items[0].id
    try:
        ann.open(item, 0, "A")
        ann.prompt(item, 0, "A", {"kind": "point", "x": 20, "y": 20, "label": 1})
        assert ann.open(item, 0, "B")["prompts"]  # relabelled, prompts kept
        undone = ann.undo(item, 0)
        assert undone["source"] == "proposal" and decode_rle(undone["mask"])[half["B"]].all()
        ann.accept(item, 0, "B")
        labels = np.asarray(Image.open(next((tmp_path / "labels").rglob("a*.png"))))
        assert (labels[half["B"]] == 2).all() and not (labels[half["A"]] == 2).any()
    finally:
        ann.close()


def test_the_app_shows_the_model_its_images_as_the_adapter_was_trained_to_see_them(images, tiny_sam):
    folder, _ = images
    tiny_sam.intensity = {"window": [100, 100], "percentiles": None}  # as an adapter trained on a window records
    annotator = Annotator(tiny_sam, folder, prefetch=False)
    try:
        assert annotator._model_image(np.array([[0.0, 255.0]], np.float32)).tolist() == [[50.0, 150.0]]
    finally:
        annotator.close()
    annotator = Annotator(tiny_sam, folder, prefetch=False, window=[100, 20])  # a window given wins
    try:
        assert annotator._model_image(np.array([[0.0, 255.0]], np.float32)).tolist() == [[90.0, 110.0]]
    finally:
        annotator.close()
