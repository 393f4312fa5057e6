"""The shipped 4-b cifar10-cnn11, compiled for jssc2022 and run bit-true through the simulator, on
a seeded sample of 500 CIFAR-10 (JPEG q75 copy) test images (eval --limit): a broken loader, quantiser, compiler or
simulator cannot hide behind it. The threshold sits a few points under the measured accuracy of
the shipped weights: 88.80 % bit-true on this sample
(`imcflow eval cifar10-cnn11 --data ../shared/data/cifar10 --mode bit_true --limit 500`)."""

import json
import os
from pathlib import Path

import pytest

from imcflow.cli import main

SHARED = Path(os.environ.get("IMCFLOW_SHARED") or Path(__file__).resolve().parents[2] / "shared")
DATA = SHARED / "data" / "cifar10"
MIN_ACCURACY = 0.85


@pytest.mark.skipif(not (DATA / "test.tar.gz").exists(), reason=f"CIFAR-10 copy not found at {DATA}")
def test_shipped_cnn11_bit_true_on_500_sampled_test_images(tmp_path, monkeypatch):
    monkeypatch.setenv("IMCFLOW_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "e.json"
    rc = main(["eval", "cifar10-cnn11", "--data", str(DATA), "--mode", "bit_true", "--limit", "500",
               "--json", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["images"] == 500
    assert result["accuracy"] >= MIN_ACCURACY, result
    # bit-true stays near the ideal-ADC accuracy of the same integers
    assert abs(result["accuracy"] - result["accuracy_ideal"]) <= 0.03, result
