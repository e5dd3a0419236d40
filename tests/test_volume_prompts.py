"""Promptable volumes: set_volume, one box propagated through the volume, corrections, the embedding cache."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest

from medadapt import MedAdaptError
from medadapt.inference.embedding_cache import EmbeddingCache
from medadapt.inference.propagation import PropagationConfig
from medadapt.io.imaging import display_orientation, load_mask, load_volume, volume_slice


def two_blobs(depth: int = 12, h: int = 64, w: int = 80, seed: int = 0):
    """A (depth, h, w) volume with two bright ellipsoids: ``a`` spans slices 2..9, ``b`` slices 4..7."""
    z, y, x = np.mgrid[:depth, :h, :w]
    a = ((z - 5.5) / 4.2) ** 2 + ((y - 24) / 14.0) ** 2 + ((x - 22) / 15.0) ** 2 <= 1
    b = ((z - 5.5) / 2.2) ** 2 + ((y - 42) / 10.0) ** 2 + ((x - 60) / 11.0) ** 2 <= 1
    rng = np.random.default_rng(seed)
    vol = np.where(a, 180.0, np.where(b, 120.0, 40.0)) + rng.normal(0, 6, a.shape)
    return vol.astype(np.float32), a, b


def dice(p: np.ndarray, t: np.ndarray) -> float:
    return 2 * (p & t).sum() / max(p.sum() + t.sum(), 1)


def tight_box(mask2d: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask2d)
    return [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]


@pytest.fixture(scope="module")
def blobs_session(litemedsam):
    vol, a, b = two_blobs()
    litemedsam.set_volume(vol, axis=0)
    yield litemedsam, vol, a, b
    litemedsam.reset_volume()


def test_one_box_gives_the_whole_structure_and_only_it(blobs_session):
    seg, vol, a, b = blobs_session
    mask = seg.predict_volume(boxes={5: tight_box(a[5])})  # array frame: x along np.take(vol, 5, 0)'s columns
    assert mask.shape == vol.shape and mask.dtype == bool
    assert dice(mask, a) > 0.85
    assert (mask & b).sum() < 0.02 * b.sum()  # the other blob is not taken
    assert mask[[0, 1, 10, 11]].sum() < 0.15 * mask.sum()  # little beyond where the structure ends (2..9)
    assert seg.volume_object.decoded <= 2 * len(vol)


def test_overlap_keeps_the_chosen_candidate_and_its_own_logits(blobs_session):
    seg, vol, a, b = blobs_session
    seg.show_plane(seg.volume, 5)  # 2-D calls on a shown plane take the display frame
    pred = seg.predict(boxes=[tight_box(display_orientation(a[5]))], multimask=True)
    m = seg.backbone.processor.mask_size
    assert pred.all_logits.shape == (1, 3, m, m)
    best = int(np.argmax(pred.all_scores[0]))
    assert np.array_equal(pred.all_logits[0, best], pred.logits[0])
    mask = seg.predict_volume(boxes={5: tight_box(a[5])}, propagation=PropagationConfig(overlap=True))
    # (overlap is not the default: on these blobs its walks stop early, 3-D Dice 0.28 against 0.85 without it)
    assert dice(mask[5], a[5]) > 0.8 and (mask & b).sum() < 0.02 * b.sum()
    # a step that picks the candidate most like its neighbour keeps that candidate's own logits (not the mask
    # mapped back to +/-10), as the next step's mask prompt
    from medadapt.prompts.types import Prompts

    walker = seg.volume_object
    start = walker.answers[5]
    step = walker._decode(4, -1, Prompts(masks=start.low.numpy()), like=start.mask)
    assert len(np.unique(step.low.numpy())) > 2
    assert ((step.low.numpy()[0] > 0) == seg.low_res_mask(step.mask)).mean() > 0.95


def test_the_other_blob_from_a_box_on_its_own_slice(blobs_session):
    seg, vol, a, b = blobs_session
    mask = seg.predict_volume(boxes={6: tight_box(b[6])})
    assert dice(mask, b) > 0.8 and (mask & a).sum() < 0.02 * a.sum()


def test_a_correction_walks_again_from_its_slice_only(blobs_session):
    seg, vol, a, b = blobs_session
    first = seg.predict_volume(boxes={3: tight_box(a[3]), 8: tight_box(a[8])})
    obj = seg.volume_object
    kept = {k: obj.answer(k) for k in (4, 5)}  # between the two prompted slices
    before = obj.decoded
    ys, xs = np.nonzero(a[8])
    after = seg.correct_volume(8, points=[[xs.mean(), ys.mean()]], point_labels=[1])
    walked = obj.decoded - before
    assert 1 <= walked <= 1 + (len(vol) - 8) + (8 - 3)  # slice 8, then up to the end and down to slice 4
    assert np.array_equal(after[:4], first[:4])  # below the walk from slice 8: untouched
    assert obj.answer(4) is not None and kept[4] is not None
    assert dice(after, a) > 0.85


def test_clicks_on_a_slice_the_walk_reached_keep_a_box_around_its_answer(blobs_session):
    """A click that changes little (background far from the object, or the object's centre) changes little:
    the slice keeps a box around the walk's answer, as a box stays under clicks in 2-D. Given with the first
    prompts on a slice without a box, the same click is applied after the walks, not as a slice they stop at."""
    seg, vol, a, b = blobs_session
    first = seg.predict_volume(boxes={5: tight_box(a[5])})
    assert dice(first, a) > 0.9
    after = seg.correct_volume(7, points=[[5, 5]], point_labels=[0])  # background, in a corner
    assert dice(after, a) > dice(first, a) - 0.03 and dice(after[7], a[7]) > 0.9
    ys, xs = np.nonzero(a[7])
    assert dice(seg.correct_volume(7, points=[[xs.mean(), ys.mean()]], point_labels=[1]), a) > 0.9
    together = seg.predict_volume(boxes={5: tight_box(a[5])}, points={7: [[5, 5]]}, point_labels={7: [0]})
    assert np.array_equal(together, after)
    assert dice(together[8:], a[8:]) > 0.85  # the walk goes on past the clicked slice


def test_between_two_prompted_slices_the_walks_go_through_and_keep_what_either_sees(blobs_session):
    seg, vol, a, b = blobs_session
    boxes = {3: tight_box(a[3]), 8: tight_box(a[8])}
    strict = PropagationConfig(min_score=0.99)  # no step passes the stopping rules
    seg.predict_volume(boxes=boxes, propagation=strict)
    obj = seg.volume_object
    assert all(obj.answer(k) is not None for k in range(4, 8))  # the object is at both ends: no rule stops there
    assert all(obj.answer(k) is None for k in (0, 1, 2, 9, 10, 11))  # beyond the outer prompts the rules hold
    for k in range(4, 8):  # fusion="max": a pixel either walk holds stays (up to the upsampling of the logits)
        either = obj.chains[(3, 1)][k - 4].mask | obj.chains[(8, -1)][7 - k].mask
        assert (either & ~obj.answer(k).mask).sum() <= 0.03 * either.sum()
    seg.predict_volume(boxes=boxes, propagation=replace(strict, through=False))
    assert all(seg.volume_object.answer(k) is None for k in range(4, 8))  # without through the rules stop them
    # a prompted slice that says the object is absent there (an empty mask) is no reason to walk through to it
    seg.predict_volume(boxes={3: boxes[3]}, masks={8: np.zeros_like(a[8])}, propagation=strict)
    assert all(seg.volume_object.answer(k) is None for k in range(4, 8))
    one = dice(seg.predict_volume(boxes={5: tight_box(a[5])}), a)
    three = {f: dice(seg.predict_volume(boxes={**boxes, 5: tight_box(a[5])}, propagation=PropagationConfig(fusion=f)), a)
             for f in ("mean", "max")}
    assert three["max"] > three["mean"] and three["max"] >= one - 0.01  # max: 0.984, mean: 0.969, one box: 0.986
    with pytest.raises(MedAdaptError, match="fusion"):
        PropagationConfig(fusion="union")


def test_a_correction_between_two_prompts_takes_over_the_slices_nearer_to_it(blobs_session):
    seg, vol, a, b = blobs_session
    boxes = {3: tight_box(a[3]), 8: tight_box(a[8])}
    strict = PropagationConfig(min_score=0.99)  # only walks that go through between prompts answer
    seg.predict_volume(boxes=boxes, propagation=strict)
    obj = seg.volume_object
    assert (3, 1) in obj.through and len(obj.chains[(3, 1)]) == 4
    seg.correct_volume(6, box=tight_box(a[6]))
    assert len(obj.chains[(3, 1)]) == 1 and len(obj.chains[(8, -1)]) == 0  # slice 4 stays; 5 and 7 go to slice 6
    assert len(obj.chains[(6, -1)]) == 2 and len(obj.chains[(6, 1)]) == 1  # the walks from 6 go through both ways
    assert all(obj.answer(k) is not None and obj.answer(k).mask.any() for k in range(3, 9))
    # the object is absent on slice 6 after all: the walks that went through to it walk again with the rules
    seg.predict_volume(boxes=boxes, propagation=strict)
    obj = seg.volume_object
    seg.correct_volume(6, mask=np.zeros_like(a[6]))
    assert not obj.answer(6).mask.any()
    assert all(obj.answer(k) is None for k in (4, 5, 7)) and not obj.through


def test_array_and_moved_axis_give_the_same_mask(litemedsam):
    vol, a, _ = two_blobs(depth=6, h=48, w=56)
    litemedsam.set_volume(vol, axis=0, cache_mb=64)
    m0 = litemedsam.predict_volume(boxes={3: tight_box(a[3])}, propagation=PropagationConfig(min_score=0.0))
    moved = np.ascontiguousarray(np.moveaxis(vol, 0, 2))
    m2 = litemedsam.predict_volume(moved, axis=2, boxes={3: tight_box(a[3])},
                                   propagation=PropagationConfig(min_score=0.0))
    litemedsam.reset_volume()
    assert m2.shape == moved.shape
    assert np.array_equal(np.moveaxis(m2, 2, 0), m0)


def test_planes_take_prompts_in_their_own_frame_and_give_masks_in_it(litemedsam):
    """set_planes: slice k is planes[k] as it stands, for prompts and for the mask that comes back."""
    vol, a, _ = two_blobs(depth=6, h=48, w=56)  # planes of 48 rows x 56 columns
    litemedsam.set_volume(vol, axis=0)
    m0 = litemedsam.predict_volume(boxes={3: tight_box(a[3])}, propagation=PropagationConfig(min_score=0.0))
    planes = np.stack([np.rot90(p) for p in vol])  # 56 x 48 planes: another frame than the array's
    litemedsam.set_planes(planes)
    mask = litemedsam.predict_volume(boxes={3: tight_box(np.rot90(a[3]))}, propagation=PropagationConfig(min_score=0.0))
    corrected = litemedsam.correct_volume(3, box=tight_box(np.rot90(a[3])))
    litemedsam.reset_volume()
    assert mask.shape == planes.shape == corrected.shape
    assert dice(mask, np.stack([np.rot90(m) for m in a])) > 0.8
    assert dice(mask, np.stack([np.rot90(m) for m in m0])) > 0.9  # the same object as in the array frame (SAM sees it turned)


def test_a_volume_file_uses_the_display_frame(litemedsam, tmp_path):
    nib = pytest.importorskip("nibabel")
    from medadapt.io.imaging import load_image, load_volume

    vol, a, _ = two_blobs(depth=6, h=48, w=56)
    data = np.ascontiguousarray(np.moveaxis(vol, 0, 2))  # slices along the third axis
    affine = np.diag([0.8, -0.7, 2.5, 1.0])
    affine[:3, 3] = [10, 20, -5]
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    truth = load_volume(path)[0] > 150  # the bright blob in the load_volume layout
    plane = load_image(path, slice_index=3, axis=2)  # what a viewer shows of slice 3
    box = tight_box(plane > 150)
    litemedsam.set_volume(path, axis=2)
    assert litemedsam.volume.geometry.spacing == pytest.approx((0.8, 0.7, 2.5))
    mask = litemedsam.predict_volume(boxes={3: box})
    litemedsam.reset_volume()
    assert mask.shape == truth.shape and dice(mask, truth) > 0.8


def test_the_cache_spills_to_disk_and_gives_the_same_answers(tiny_sam):
    rng = np.random.default_rng(0)
    vol = rng.random((8, 32, 32)).astype(np.float32) * 100
    cfg = PropagationConfig(min_score=0.0, min_area_ratio=0.0)
    prompts = {"boxes": {4: [4, 4, 20, 20]}, "masks": {2: np.pad(np.ones((10, 10), bool), 11)}}
    tiny_sam.set_volume(vol, axis=0, cache_mb=1024)
    big = tiny_sam.predict_volume(propagation=cfg, **prompts)
    one = tiny_sam.volume.cache.get(4)  # the boxed slice is always encoded
    size = one.numel() * one.element_size()
    tiny_sam.set_volume(vol, axis=0, cache_mb=2.5 * size / 2**20)  # room for two embeddings
    small = tiny_sam.predict_volume(propagation=cfg, **prompts)
    cache = tiny_sam.volume.cache
    folder = cache._folder
    assert cache.writes > 0 and cache.memory_bytes <= 2.5 * size and folder.is_dir()
    assert np.array_equal(big, small)
    tiny_sam.reset_volume()
    assert not folder.exists()


def test_embedding_cache_keeps_the_most_recent_in_memory():
    import torch

    cache = EmbeddingCache(budget_bytes=3 * 4 * 16)
    for k in range(5):
        cache.put(k, torch.full((16,), float(k)))
    assert cache.memory_bytes <= 3 * 4 * 16 and len(cache) == 5 and cache.writes == 2
    assert torch.equal(cache.get(0), torch.zeros(16))  # read back from disk
    cache.close()
    assert cache.get(3) is None


def test_a_killed_process_spill_folder_is_removed_by_the_next_cache(tmp_path):
    import subprocess
    import sys

    import torch

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"medadapt-embeddings-{int(gone.stdout)}-abc"  # what a SIGKILLed process leaves behind
    stale.mkdir()
    (stale / "0.pt").write_bytes(b"x")
    live = tmp_path / f"medadapt-embeddings-{os.getppid()}-def"  # a running process's folder stays
    live.mkdir()
    cache = EmbeddingCache(budget_bytes=0, folder=tmp_path)
    cache.put(0, torch.zeros(4))
    assert stale.exists()  # nothing spilled yet: the folder is made (and the sweep done) on the first spill
    cache.put(1, torch.zeros(4))
    assert not stale.exists() and live.exists() and cache.writes == 1
    cache.close()


def test_a_mask_prompt_alone_is_the_slice_answer(tiny_sam):
    vol = np.random.default_rng(1).random((5, 24, 24)).astype(np.float32)
    given = np.zeros((24, 24), bool)
    given[5:15, 3:12] = True
    tiny_sam.set_volume(vol, axis=0)
    out = tiny_sam.predict_volume(masks={2: given}, propagation=PropagationConfig(min_score=1.0))
    tiny_sam.reset_volume()
    assert np.array_equal(out[2], given) and not out[[0, 1, 3, 4]].any()  # min_score=1 stops every walk


@pytest.mark.parametrize("call, message", [
    (lambda s: s.predict_volume(boxes=[1, 2, 3, 4]), "dict"),
    (lambda s: s.predict_volume(boxes={9: [1, 2, 10, 10]}), "outside the volume"),
    (lambda s: s.predict_volume(boxes={1: [30, 25, 90, 90]}), "outside the image"),
    (lambda s: s.predict_volume(boxes={1: [[1, 2, 5, 5], [3, 3, 8, 8]]}), "one box per slice"),
    (lambda s: s.predict_volume(points={1: [[3, 3]]}, point_labels={2: [1]}), "no points"),
    (lambda s: s.predict_volume(masks={1: np.ones((3, 3), bool)}), "shape"),
    (lambda s: s.predict_volume(boxes={1: [1, 2, 5, 5]}, classes=["x"]), "automatic"),
    (lambda s: s.correct_volume(1, points=[[3, 3]]), "nothing to correct"),
    (lambda s: s.predict_volume(), "prompt-free"),
    (lambda s: s.predict_volume(axis=1), "axis=0"),
])
def test_bad_volume_prompts_get_one_clear_error(tiny_sam, call, message):
    tiny_sam.set_volume(np.random.default_rng(0).random((4, 20, 24)).astype(np.float32), axis=0)
    with pytest.raises(MedAdaptError, match=message):
        call(tiny_sam)
    tiny_sam.reset_volume()


def test_no_volume_and_bad_volumes_are_refused(tiny_sam):
    with pytest.raises(MedAdaptError, match="no volume set"):
        tiny_sam.predict_volume(boxes={0: [1, 1, 5, 5]})
    with pytest.raises(MedAdaptError, match="3-D"):
        tiny_sam.set_volume(np.zeros((4, 4)))
    for axis in (3, "0", 1.5):
        with pytest.raises(MedAdaptError, match="axis"):
            tiny_sam.set_volume(np.zeros((4, 4, 4)), axis=axis)
    tiny_sam.set_volume(np.random.default_rng(0).random((4, 5, 6)).astype(np.float32))
    assert tiny_sam.volume.axis == 2  # the default, as predict_volume's, --axis and the data config's
    with pytest.raises(MedAdaptError, match="axis must be 0, 1 or 2"):
        tiny_sam.predict_volume(axis=5, boxes={0: [1, 1, 3, 3]})
    tiny_sam.reset_volume()
    for planes, message in (([], "at least one plane"), ([np.zeros((4, 5)), np.zeros((4, 6))], "one size"),
                            ([np.zeros((4, 5, 3))], "2-D grey planes")):
        with pytest.raises(MedAdaptError, match=message):
            tiny_sam.set_planes(planes)
    with pytest.raises(MedAdaptError, match="spacing"):
        tiny_sam.set_volume(np.zeros((4, 4, 4)), spacing=(1, 0, 1))
    for budget in (-1, float("nan"), "x", True):
        with pytest.raises(MedAdaptError, match="cache_mb is the in-memory embedding budget in MiB"):
            tiny_sam.set_volume(np.zeros((4, 4, 4)), cache_mb=budget)


def test_cli_propagates_a_box_on_a_nifti_and_keeps_its_affine(tmp_path, capsys):
    nib = pytest.importorskip("nibabel")
    from medadapt.cli import main

    vol, _, _ = two_blobs(depth=5, h=40, w=48)
    affine = np.array([[0, 0.9, 0, 5], [-0.8, 0, 0, 7], [0, 0, 3.0, -2], [0, 0, 0, 1]], float)  # axes permuted
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(np.moveaxis(vol, 0, 2)), affine), path)
    out = tmp_path / "mask.nii.gz"
    assert main(["predict", str(path), "--model", "tiny_sam_vit", "--box", "2", "4", "4", "30", "30",
                 "--out", str(out)]) == 0
    assert "mask written to" in capsys.readouterr().out
    written = nib.load(out)
    assert np.allclose(written.affine, affine) and written.shape == nib.load(path).shape
    assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1}
    assert main(["predict", str(path), "--model", "tiny_sam_vit", "--box", "4", "4", "30", "30",
                 "--out", str(tmp_path / "m2.nii.gz")]) == 2  # a 2-D box on a volume needs --slice
    assert "has 5 slices" in capsys.readouterr().err
    png, one = tmp_path / "slice.png", tmp_path / "slice.nii.gz"  # one slice, as PNG and as NIfTI
    for target in (png, one):
        assert main(["predict", str(path), "--model", "tiny_sam_vit", "--slice", "2", "--box", "4", "4", "30", "30",
                     "--out", str(target)]) == 0
    written = nib.load(one)  # a label volume on the scan's grid, the mask on slice 2 only
    assert np.allclose(written.affine, affine) and written.shape == nib.load(path).shape
    labels, _ = load_volume(one)
    assert labels[..., 2].any() and not np.delete(labels, 2, axis=2).any()
    assert np.array_equal(volume_slice(labels, 2, 2) > 0, load_mask(png) > 0)  # where the PNG has it


def test_infinite_or_oversized_voxels_complex_files_and_prompts_on_blank_slices_are_refused(tiny_sam, tmp_path):
    """An infinite voxel is a saturated one, not padding: read as the darkest value it would hide the object.
    float64 values beyond float32 become infinite in the model. A complex NIfTI would keep only its real part.
    A box on a constant slice (or in an all-zero volume) has nothing to segment."""
    nib = pytest.importorskip("nibabel")
    vol = np.random.default_rng(4).random((4, 32, 32)).astype(np.float32)
    vol[:, 10:20, 10:20] = np.inf
    with pytest.raises(MedAdaptError, match="400 infinite values; replace them first"):
        tiny_sam.set_volume(vol)
    with pytest.raises(MedAdaptError, match="beyond float32's range"):
        tiny_sam.set_volume(np.where(np.isinf(vol), np.float64(1e300), vol.astype(np.float64)))
    path = tmp_path / "complex.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 3), np.complex64), np.eye(4)), path)
    with pytest.raises(MedAdaptError, match="complex values.*magnitude"):
        tiny_sam.set_volume(path)
    vol = np.random.default_rng(5).random((4, 32, 32)).astype(np.float32)
    vol[1] = 0.0  # padding
    tiny_sam.set_volume(vol, axis=0)
    with pytest.raises(MedAdaptError, match="slice 1 is constant.*boxes must go on a slice that shows"):
        tiny_sam.predict_volume(boxes={1: [4, 4, 20, 20]})
    assert tiny_sam.predict_volume(boxes={2: [4, 4, 20, 20]}).shape == vol.shape
    with pytest.raises(MedAdaptError, match=r"boxes must be numbers, \[x0, y0, x1, y1\]"):
        tiny_sam.predict_volume(boxes={2: "4 4 20 20"})
    with pytest.raises(MedAdaptError, match=r"masks\[2\] must be a bool or 0/1 array with no NaN"):
        tiny_sam.predict_volume(masks={2: np.full((32, 32), np.nan)})  # all-NaN read as all foreground
    tiny_sam.set_volume(np.zeros((3, 16, 16), np.float32), axis=0)
    with pytest.raises(MedAdaptError, match="slice 0 is constant"):
        tiny_sam.predict_volume(points={0: [[8, 8]]}, point_labels={0: [1]})
    tiny_sam.reset_volume()


def test_nan_outside_the_body_is_read_as_background_not_as_a_blank_slice(tiny_sam):
    vol = np.random.default_rng(3).random((4, 24, 24)).astype(np.float32)
    vol[:, :3] = np.nan  # a masked NIfTI: NaN outside the body
    tiny_sam.set_volume(vol, axis=0)
    session = tiny_sam.volume
    assert not any(session.is_blank(k) for k in range(4)) and np.isfinite(session.plane(1)).all()
    assert np.isnan(vol).any()  # the caller's array is left as it was
    tiny_sam.reset_volume()
    with pytest.raises(MedAdaptError, match="no finite value"):
        tiny_sam.set_volume(np.full((3, 8, 8), np.nan, np.float32))



def test_patience_carries_a_walk_past_a_slice_that_fails(litemedsam):
    vol, a, _ = two_blobs()
    vol[6] = 40.0 + np.random.default_rng(3).normal(0, 6, vol[6].shape)  # blob a is missing on slice 6
    litemedsam.set_volume(vol, axis=0)
    try:
        strict = litemedsam.predict_volume(boxes={4: tight_box(a[4])}, propagation=PropagationConfig(patience=0))
        patient = litemedsam.predict_volume(boxes={4: tight_box(a[4])}, propagation=PropagationConfig(patience=1))
    finally:
        litemedsam.reset_volume()
    assert not strict[7:].any()  # the walk up stops at the gap
    assert dice(patient[7:], a[7:]) > 0.7  # and with patience it goes on beyond it
    assert np.array_equal(strict[:6], patient[:6])  # below the gap nothing changes
    with pytest.raises(MedAdaptError, match="patience"):
        PropagationConfig(patience=-1)
    with pytest.raises(MedAdaptError, match="base_patience"):
        PropagationConfig(base_patience=True)
    with pytest.raises(MedAdaptError, match="base_threshold"):
        PropagationConfig(base_threshold=1.0)


def test_a_blank_slice_inside_the_structure_does_not_end_the_walk(litemedsam):
    """A dropped (zero-filled) slice has no answer, and the walk carries on past it."""
    vol, a, _ = two_blobs()
    vol[7] = 0.0
    litemedsam.set_volume(vol, axis=0)
    try:
        mask = litemedsam.predict_volume(boxes={5: tight_box(a[5])})
    finally:
        litemedsam.reset_volume()
    assert not mask[7].any()
    assert dice(mask[8:], a[8:]) > 0.8 and dice(mask[:7], a[:7]) > 0.85


def test_box_threshold_reaches_into_the_unsure_rim_connected_to_the_mask(tiny_sam):
    from medadapt.inference.propagation import Propagation, SliceAnswer

    seg = tiny_sam
    seg.set_volume(two_blobs()[0], axis=0)
    try:
        session = seg.volume
        y, x = np.mgrid[: session.meta.original_size[0], : session.meta.original_size[1]]  # the decoder's frame
        core = (y - 28) ** 2 + (x - 32) ** 2 <= 10**2
        rim = ((y - 28) ** 2 + (x - 32) ** 2 <= 20**2) & ~core  # connected to the mask
        far = (y - 68) ** 2 + (x - 32) ** 2 <= 6**2  # as unsure, but apart from it
        proc = seg.backbone.processor
        low = sum(wt * (proc.mask_to_low_res(m, session.meta)[:, 0] > 0).float()
                  for wt, m in ((12.0, core), (9.0, rim | far)))
        answer = SliceAnswer(low - 10.0, 0.9, core)  # logit 2 on the mask, -1 (p = 0.27) on the rim and far blob
        strict = Propagation(session, PropagationConfig())._reach(answer, core)
        assert np.array_equal(strict, core)  # 0.5: the box surrounds the mask itself
        loose = Propagation(session, PropagationConfig(box_threshold=0.2))._reach(answer, core)
    finally:
        seg.reset_volume()
    # (tiny_sam's 16 x 16 logits blur the rim's outer edge)
    assert loose[core].all() and loose[rim].mean() > 0.4 and not loose[far].any()
    for bad in (0.0, 0.7):
        with pytest.raises(MedAdaptError, match="box_threshold"):
            PropagationConfig(box_threshold=bad)


def test_an_adapted_models_class_proposal_guides_each_next_box():
    from scipy import ndimage

    from medadapt import Segmenter
    from medadapt.adapters import AdapterConfig, AutomaticConfig, apply
    from medadapt.foundation import build_backbone
    from medadapt.inference.propagation import Propagation
    from medadapt.prompts.regions import mask_box

    model, _ = apply(build_backbone("tiny_sam_vit"), AdapterConfig(train=["mask_decoder"], automatic=AutomaticConfig(
        class_names=["a"], label_values=[1])))
    seg = Segmenter(model.eval(), device="cpu")
    vol, a, _ = two_blobs()
    seg.set_volume(vol, axis=0)
    try:
        seg.show_plane(seg.volume, 5)
        proposal = seg.predict().masks[0]
        assert proposal.any(), "the class proposal on the prompted slice is empty: pick another slice"
        boxes = {}
        decode = seg.decode_embedding

        def spy(embedding, meta, prompts, **kw):  # records the box each slice is decoded from
            boxes.setdefault(len(boxes), None if prompts.boxes is None else np.asarray(prompts.boxes[0]))
            return decode(embedding, meta, prompts, **kw)

        seg.decode_embedding = spy
        guided = Propagation(seg.volume, PropagationConfig(min_score=0.0, max_drop=1.0, min_area_ratio=0.0))
        cols = np.nonzero(proposal.any(0))[0]
        given = proposal.copy()
        given[:, (cols.min() + cols.max()) // 2 :] = False  # the left half of the class proposal: IoU about 0.5
        guided.start({5: {"mask": given}})
        assert guided.guide == "a"
        assert 0 in boxes, "slice 6 was not decoded"
        seg.show_plane(seg.volume, 6)
        parts, _ = ndimage.label(seg.predict().masks[0])
        keep = np.unique(parts[given])
        assert (keep > 0).any()
        region = np.isin(parts, keep[keep > 0])
        assert np.allclose(boxes[0], mask_box(region, 0.05), atol=1e-4)  # slice 6 came from the proposal's box
        assert not np.allclose(mask_box(region, 0.05), mask_box(given, 0.05), atol=0.5)  # not the given mask's
        boxes.clear()
        plain = Propagation(seg.volume, PropagationConfig(min_score=0.0, max_drop=1.0, min_area_ratio=0.0,
                                                          proposals=False))
        plain.start({5: {"mask": given}})
        assert plain.guide is None
        assert np.allclose(boxes[0], mask_box(given, 0.05), atol=1e-4)  # the previous answer's box
        elsewhere = np.zeros_like(proposal)
        rows = np.nonzero(~proposal.any(1))[0]
        elsewhere[rows[:3], :3] = True  # rows the proposal does not touch: IoU 0
        apart = Propagation(seg.volume, PropagationConfig())
        apart.start({5: {"mask": elsewhere}})
        assert apart.guide is None  # no class matches the object: the walk is not guided
    finally:
        seg.decode_embedding = decode
        seg.reset_volume()


def test_class_proposals_come_from_one_joint_decode_per_slice_as_automatic_mode_shows_them():
    from medadapt import Segmenter
    from medadapt.adapters import AdapterConfig, AutomaticConfig, apply
    from medadapt.foundation import build_backbone
    from medadapt.inference.propagation import Propagation

    model, _ = apply(build_backbone("tiny_sam_vit"), AdapterConfig(train=["mask_decoder"], automatic=AutomaticConfig(
        class_names=["a", "b"], label_values=[1, 2])))
    seg = Segmenter(model.eval(), device="cpu")
    vol, a, _ = two_blobs()
    seg.set_volume(vol, axis=0)
    calls = []
    joint = seg.backbone.decode_classes

    def count(embedding, ids):
        calls.append(ids.tolist())
        return joint(embedding, ids)

    try:
        seg.show_plane(seg.volume, 5)
        shown = seg.predict()
        obj = Propagation(seg.volume, PropagationConfig())
        seg.backbone.decode_classes = count
        for name, mask in zip(shown.labels, shown.masks):
            assert np.array_equal(obj._proposal(5, name), mask)  # what automatic mode shows on the slice
        assert calls == [[0, 1]]  # both classes in one decoder pass, reused for the second class
        calls.clear()
        show = seg.volume.mask_to_display
        obj.start({4: {"mask": show(np.take(a, 4, 0))}, 6: {"mask": show(np.take(a, 6, 0))}})
        assert calls[:2] == [[0, 1], [0, 1]]  # choosing the guide: one joint pass per prompted slice
    finally:
        seg.backbone.decode_classes = joint
        seg.reset_volume()


def test_an_adapted_model_walks_with_the_base_decoder_too_and_answers_their_average(tmp_path):
    import torch

    from medadapt import Segmenter
    from medadapt.adapters import AdapterConfig, AutomaticConfig, LoraConfig, apply, keeps_base_encoder, save_adapter
    from medadapt.foundation import build_backbone
    from medadapt.inference.propagation import Propagation, SliceAnswer, mean_probability, probability_mask
    from medadapt.prompts.types import Prompts

    model, _ = apply(build_backbone("tiny_sam_vit"), AdapterConfig(train=["mask_decoder"], automatic=AutomaticConfig(
        class_names=["a"], label_values=[1])))
    with torch.no_grad():  # the adapted decoder now answers differently from the base one
        for p in model.mask_decoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_adapter(model, tmp_path / "adapter")
    seg = Segmenter.from_pretrained("tiny_sam_vit", adapter=tmp_path / "adapter", device="cpu", precision="float32")
    base = build_backbone("tiny_sam_vit").mask_decoder
    assert seg.base_decoder is not None  # kept from the base weights, before the adapter was loaded
    assert all(torch.equal(a, b) for a, b in zip(seg.base_decoder.state_dict().values(), base.state_dict().values()))
    assert Segmenter.from_pretrained("tiny_sam_vit", device="cpu").base_decoder is None  # no adapter, no base walk
    assert not keeps_base_encoder(apply(build_backbone("tiny_sam_vit"), AdapterConfig(lora=LoraConfig(rank=2)))[0])
    assert not keeps_base_encoder(apply(build_backbone("tiny_sam_vit"), AdapterConfig(train=["image_encoder"]))[0])

    vol, a, _ = two_blobs()
    seg.set_volume(vol, axis=0)
    try:
        loose = PropagationConfig(min_score=0.0, max_drop=1.0, min_area_ratio=0.0)
        prompts = seg.volume.slice_prompts(boxes={5: tight_box(a[5])})
        both = Propagation(seg.volume, loose)
        both.start(prompts)
        assert both.partner is not None and both.partner.decoder is seg.base_decoder and both.partner.guide is None
        assert both.partner.config.patience == loose.base_patience == 1 and both.config.patience == 0
        own, other = both._own(5), both.partner.answer(5)
        assert not torch.allclose(own.low, other.low, atol=1e-3)  # two decoders, two answers
        fused = both.answer(5)
        expected = torch.logit(((torch.sigmoid(own.low) + torch.sigmoid(other.low)) / 2).clamp(1e-6, 1 - 1e-6))
        assert torch.allclose(fused.low, expected, atol=1e-3)
        proc = seg.backbone.processor
        cut = float(np.log(loose.base_threshold / (1 - loose.base_threshold)))
        assert np.array_equal(fused.mask, (proc.postprocess_logits(fused.low, seg.volume.meta)[0] > cut).numpy())
        sure, against = torch.full_like(own.low, 3.0), torch.full_like(own.low, -9.0)  # p 0.95 and 0.0001
        split = mean_probability([sure, against], 2)  # one decoder sure of the pixel, the other sure against
        assert probability_mask(seg.volume, split, 0.45).all() and not probability_mask(seg.volume, split, 0.5).any()
        walked = SliceAnswer(sure, 0.9, np.ones_like(fused.mask))  # the adapted walk alone reaches slice 6, sure
        kept = both.chains, both.partner.chains
        both.chains, both.partner.chains = {(5, 1): [walked]}, {}
        assert both._own(6) is walked and not both.answer(6).mask.any()  # a slice only one walk reached: background
        both.chains, both.partner.chains = kept
        emb = seg.volume.embedding(5)
        alone = seg.decode_embedding(emb, seg.volume.meta, Prompts(boxes=prompts[5]["box"][None]),
                                     mask_decoder=seg.base_decoder)
        assert torch.allclose(other.low, torch.from_numpy(alone.logits[:1]), atol=1e-2)  # the base decoder's answer
        one = Propagation(seg.volume, PropagationConfig(min_score=0.0, max_drop=1.0, min_area_ratio=0.0, base=False))
        one.start(prompts)
        assert one.partner is None and torch.equal(one.answer(5).low, own.low)
        both.add(5, points=[[tight_box(a[5])[0] + 3, 24]], labels=[0])  # a correction reaches both walks
        assert len(both.prompts[5].points) == len(both.partner.prompts[5].points) == 1
        assert both.volume().shape == vol.shape
        drawn = np.zeros(vol.shape[1:], bool)
        drawn[8:40, 20] = True  # a one-pixel line and a block, given as a mask alone: kept as drawn
        drawn[10:20, 25:35] = True
        assert np.array_equal(seg.predict_volume(masks={3: drawn}, propagation=loose)[3], drawn)
    finally:
        seg.reset_volume()
