"""gflnb.numerics.optrace: a traced run computes what gflnb train computes (losses equal bit for bit), a run
traced twice gives the same bytes for every op, and compare names the op where two traces part."""
import copy
import json

import pytest

from gflnb.numerics import optrace
from gflnb.config import get_config
from gflnb.data.synth import dataset_paths
from gflnb.engine.train import TrainOptions, train

STEPS = 2


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    a = optrace.record(steps=STEPS, data_root=str(root), num_train=16, num_val=2)
    b = optrace.record(steps=STEPS, data_root=str(root), num_train=16, num_val=2)
    return root, a, b


def test_the_trace_changes_no_number(traces, tmp_path):
    root, a, _ = traces
    ann, imgs = dataset_paths(root, "train")
    train(get_config("gfl_cpu_demo"), TrainOptions(str(ann), str(imgs), str(tmp_path), max_iters=STEPS,
                                                  progress=False, keep_epoch_checkpoints=False, tensorboard=False))
    plain = [json.loads(ln) for ln in (tmp_path / "log.jsonl").read_text().splitlines() if '"iter"' in ln]
    assert [{k: p[k] for k in ("iter", "loss_cls", "loss_bbox", "loss_dfl")} for p in plain[:STEPS]] == \
        [{k: r[k] for k in ("iter", "loss_cls", "loss_bbox", "loss_dfl")} for r in a["losses"]]


def test_a_rerun_gives_the_same_bytes_for_every_op(traces, tmp_path):
    _, a, b = traces
    names = {op[0] for op in a["ops"]}
    # the trace sees model init, the forward and backward convolutions and the optimizer
    assert {"aten.convolution.default", "aten.convolution_backward.default", "aten._fused_adamw_.default"} <= names
    assert 0 < a["setup_ops"] < len(a["ops"]) and all(len(op) == 5 for op in a["ops"])
    assert optrace.compare(a, b).kind == "same"
    optrace.save(a, tmp_path / "a.json.gz")
    assert optrace.main(["compare", str(tmp_path / "a.json.gz"), str(tmp_path / "a.json.gz")]) == 0


def _first_backward_conv(t) -> int:
    return next(i for i, op in enumerate(t["ops"]) if op[0] == "aten.convolution_backward.default")


def test_compare_names_the_op_that_computes_differently(traces, tmp_path, capsys):
    _, a, _ = traces
    i = _first_backward_conv(a)
    b = copy.deepcopy(a)
    b["ops"][i][3] = ["000000000000"] + b["ops"][i][3][1:]  # this op's output differs ...
    for op in b["ops"][i + 1:]:  # ... and with it everything that reads it
        op[2], op[3] = [d[::-1] for d in op[2]], [d[::-1] for d in op[3]]
    p = optrace.compare(a, b)
    assert (p.index, p.kind, p.op[0]) == (i, "outputs", "aten.convolution_backward.default")
    assert p.op[1].startswith("backward:") and p.first_by_op["aten.convolution_backward.default"] == i
    optrace.save(a, tmp_path / "a.json.gz")
    optrace.save(b, tmp_path / "b.json.gz")
    assert optrace.main(["compare", str(tmp_path / "a.json.gz"), str(tmp_path / "b.json.gz")]) == 1
    out = capsys.readouterr().out
    assert f"first difference at op {i} " in out and "computes differently" in out


def test_compare_tells_a_changed_input_and_a_changed_path(traces):
    _, a, _ = traces
    b = copy.deepcopy(a)
    b["ops"][5][2] = ["ffffffffffff"]
    b["ops"][5][3] = ["ffffffffffff"]
    assert (optrace.compare(a, b).index, optrace.compare(a, b).kind) == (5, "inputs")
    c = copy.deepcopy(a)
    c["ops"][7][0] = "aten.other.default"
    assert (optrace.compare(a, c).index, optrace.compare(a, c).kind) == (7, "ops")
    d = copy.deepcopy(a)
    d["ops"] = d["ops"][:-3]
    assert (optrace.compare(a, d).index, optrace.compare(a, d).kind) == (len(a["ops"]) - 3, "ops")


def test_an_old_format_is_refused(tmp_path):
    optrace.save({"format": 0, "ops": []}, tmp_path / "old.json.gz")
    with pytest.raises(ValueError, match="format 0"):
        optrace.load(tmp_path / "old.json.gz")
