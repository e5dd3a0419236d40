"""The annotation app with online learning: accepted masks reach the learner, whose weights the app then serves."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the annotation app needs the app extra: pip install 'medadapt[app]'")
from test_annotate_api import box_around, client, ids, images, url  # noqa: E402,F401

from medadapt.app import Annotator  # noqa: E402
from medadapt.app.learning import accept_hook, online_segmenter  # noqa: E402


def test_accepted_masks_train_the_served_model_and_a_restart_resumes(images, tmp_path):
    folder, truth = images
    seg, learner = online_segmenter("litemedsam", tmp_path / "online", device="cpu")
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
