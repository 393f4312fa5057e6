"""Weight averaging of float state_dicts (imcflow.train.soup)."""

import pytest
import torch
from torch import nn

from imcflow.train.checkpoint import TrainError
from imcflow.train.soup import average_state_dicts, main


def _net(seed):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    m[1].running_mean.uniform_(-1, 1)
    m[1].num_batches_tracked += seed
    return m.state_dict()


def test_mean_of_float_tensors_and_first_integer_buffers():
    a, b = _net(1), _net(2)
    avg = average_state_dicts([a, b])
    for k, v in a.items():
        if v.is_floating_point():
            torch.testing.assert_close(avg[k], (a[k] + b[k]) / 2)
            assert avg[k].dtype == v.dtype
        else:
            assert torch.equal(avg[k], a[k])
    assert average_state_dicts([a])["0.weight"].equal(a["0.weight"])


def test_mismatched_networks_are_refused():
    a = _net(1)
    b = nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5)).state_dict()
    with pytest.raises(TrainError, match="0.weight has shape"):
        average_state_dicts([a, b])
    with pytest.raises(TrainError, match="other keys"):
        average_state_dicts([a, nn.Linear(2, 2).state_dict()])
    with pytest.raises(TrainError, match="at least one"):
        average_state_dicts([])


def test_command_line(tmp_path, capsys):
    pa, pb, out = tmp_path / "a.pt", tmp_path / "b.pt", tmp_path / "s" / "avg.pt"
    torch.save(_net(1), pa)
    torch.save({"model": _net(2), "epoch": 3}, pb)  # a checkpoint holding the state_dict
    assert main(["--out", str(out), str(pa), str(pb)]) == 0
    torch.testing.assert_close(torch.load(out)["0.bias"], (_net(1)["0.bias"] + _net(2)["0.bias"]) / 2)
    import json
    rec = json.loads((out.parent / "soup.json").read_text())
    assert rec["members"] == [str(pa), str(pb)] and rec["command"].startswith("python -m imcflow.train.soup")
    from imcflow.train.export import _source_run
    src = _source_run(out)
    assert [m["weights"] for m in src["soup"]] == [str(pa), str(pb)]
    assert main(["--out", str(out), str(tmp_path / "missing.pt")]) == 2
    assert "no such weights file" in capsys.readouterr().err
