"""Nothing medadapt does tries the network: predict (the pretrained LiteMedSAM the demo loads), finetune,
and evaluate all run with every socket connection refused, and none is attempted."""

from __future__ import annotations

import socket

import numpy as np
import pytest
from conftest import tiny_run, two_class_dataset
from PIL import Image


@pytest.fixture
def no_network(monkeypatch):
    """Every way to open a connection raises and is recorded: the test asserts none was tried."""
    attempts: list = []

    def refuse(*args, **kwargs):
        attempts.append(args[1:] if args and isinstance(args[0], socket.socket) else args)
        raise OSError("the network is switched off in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


def test_the_guard_catches_a_connection(no_network):
    with pytest.raises(OSError, match="switched off"):
        socket.create_connection(("127.0.0.1", 9), timeout=0.1)
    with pytest.raises(OSError, match="switched off"):
        socket.socket().connect(("127.0.0.1", 9))
    assert len(no_network) == 2


def test_predict_finetune_and_evaluate_run_offline(no_network, tmp_path, capsys):
    from medadapt.cli import main
    from medadapt.evaluation.evaluate import evaluate_run

    arr = np.full((96, 128), 40, np.uint8)
    arr[30:70, 40:90] = 200
    Image.fromarray(arr).save(tmp_path / "scan.png")
    # the pretrained LiteMedSAM, loaded as the demo loads it, from the files its package ships
    assert main(["predict", str(tmp_path / "scan.png"), "--box", "38", "28", "92", "72",
                 "--out", str(tmp_path / "mask.png")]) == 0
    assert (np.asarray(Image.open(tmp_path / "mask.png")) > 0).any()

    root = tmp_path / "data"
    two_class_dataset(root, n=6)
    run = tiny_run(root, tmp_path / "runs", labeled=["000", "001"], val=["002"], test=["003"])
    assert (run / "adapter" / "adapter.safetensors").is_file()
    report = evaluate_run(run, split="test", modes=["automatic"], metrics=["dice"])
    assert report is not None
    capsys.readouterr()
    assert no_network == [], f"medadapt tried the network: {no_network}"
