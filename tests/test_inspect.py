"""``imcflow inspect`` and the layer statistics behind it (frontend/stats.py)."""

import dataclasses
import json
import math

import pytest

from imcflow.cli import main
from imcflow.config import get_preset
from imcflow.frontend import load_graph, normalize
from imcflow.frontend.stats import graph_stats


def test_resnet50_totals(capsys):
    assert main(["inspect", "resnet50"]) == 0
    out = capsys.readouterr().out
    total = out.strip().splitlines()[-1]
    assert "25,557,032 parameters (25.56 M)" in total
    assert "(4.09 G)" in total
    macs = int(total.split(" MACs")[0].split(", ")[-1].replace(",", ""))
    assert abs(macs - 4.1e9) < 0.05e9
    assert "layer4.2.conv3" in out and "(2048, 7, 7)" in out


def test_resnet50_stats_library():
    s = graph_stats(load_graph("resnet50"), get_preset("jssc2022"), 4)
    assert s.params == 25_557_032
    assert s.macs == 4_089_184_256  # 4.09 G MACs per 224x224 image
    assert s.weight_layers == 54  # 53 convolutions (incl. 4 downsample) + fc
    fc = next(layer for layer in s.layers if layer.name == "fc")
    # 2048 rows over 1152-row arrays -> 2 row tiles; 1000 x 4 b = 4000 columns over 256 -> 16 column tiles
    assert (fc.rows, fc.cols, fc.row_tiles, fc.col_tiles, fc.arrays) == (2048, 4000, 2, 16, 32)
    assert fc.macs == 2048 * 1000 and fc.params == 2048 * 1000 + 1000
    # normalising folds BN (gamma, beta) into biases: MACs do not change
    assert graph_stats(normalize(load_graph("resnet50")), get_preset("jssc2022"), 4).macs == s.macs


def _by_hand(chip, w_bits):
    """cnn-tiny counted by hand: conv 3->8 3x3 on 8x8, conv 8->16 3x3 on 8x8, linear 256->10."""
    layers = [(8, 3, 3, 64), (16, 8, 3, 64), (10, 256, 1, 1)]
    arrays = macs = 0
    for c_out, c_in, k, positions in layers:
        macs += c_out * c_in * k * k * positions
        per_tile = chip.array.rows // (k * k)
        arrays += math.ceil(c_in / per_tile) * math.ceil(c_out * w_bits / chip.array.cols)
    return macs, arrays


@pytest.mark.parametrize("chip_name,w_bits", [("jssc2022", 4), ("tiny", 4), ("tiny", 8), ("jssc2022", 1)])
def test_cnn_tiny_by_hand(chip_name, w_bits):
    chip = get_preset(chip_name)
    s = graph_stats(load_graph("cnn-tiny"), chip, w_bits)
    assert (s.macs, s.arrays) == _by_hand(chip, w_bits)
    assert s.params == 224 + 16 + 1168 + 32 + 2570


def test_array_count_follows_config():
    chip = get_preset("tiny")
    bigger = dataclasses.replace(chip, array=dataclasses.replace(chip.array, rows=144, cols=64))
    g = load_graph("cnn-tiny")
    assert graph_stats(g, bigger, 4).arrays < graph_stats(g, chip, 4).arrays


def test_json_output(capsys):
    assert main(["inspect", "resnet-tiny", "--chip", "tiny", "--w-bits", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["chip"] == "tiny" and data["w_bits"] == 2 and data["chip_arrays"] == 4
    assert data["params"] == sum(layer["params"] for layer in data["layers"]) == 1834
    assert data["arrays"] == sum(layer["arrays"] for layer in data["layers"])
    assert [layer["op"] for layer in data["layers"]].count("conv") == 5


def test_onnx_file(tmp_path, capsys):
    import warnings

    import torch

    from imcflow.models import get_model
    path = tmp_path / "mlp.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(get_model("mlp-tiny").eval(), (torch.randn(1, 1, 8, 8),), str(path), dynamo=False)
    assert main(["inspect", str(path), "--w-bits", "8"]) == 0
    out = capsys.readouterr().out
    assert "2,410 parameters" in out and "2,368 MACs" in out


def test_an_activation_is_listed_by_its_function(capsys):
    from torch import nn
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 4, 1), nn.LeakyReLU(0.1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    stats = graph_stats(load_graph(model, (3, 8, 8)), get_preset("tiny"), 4)
    assert [layer.op for layer in stats.layers][:4] == ["conv", "silu", "conv", "leaky_relu"]
