"""Where two machines part: a digest of every ATen op of a run's set-up and first training steps.

gflnb promises the same numbers on every machine, and a detector trained from scratch turns a
last-bit difference into another model within a few dozen steps (AdamW's first steps move every
weight by about the lr, whatever the size of its gradient, so a gradient that is rounding noise
gets a full step of either sign). When two machines disagree, the AP says nothing about where.
This module records, for every ATen op the run executes (model init, data, forward, backward,
optimizer), a hash of the bytes of its tensor inputs and outputs, and :func:`compare` walks two
such traces to the first op whose inputs agree and whose outputs do not: the kernel that computes
differently on the two machines.

    python -m gflnb.numerics.optrace record trace.json.gz               # gfl_cpu_demo, synthetic set v2, 2 steps
    python -m gflnb.numerics.optrace compare experiments/portability/<machine>.json.gz trace.json.gz

The record runs gflnb's own set-up and training loop (:func:`gflnb.engine.train.setup`,
:func:`gflnb.engine.train.train_epoch`) under a ``TorchDispatchMode``: it changes none of the numbers,
only observes them. Ops that return uninitialized memory (``empty`` and kin) are not hashed.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

FORMAT = 1
# outputs that are uninitialized memory: their bytes are whatever the allocator left there
UNINITIALIZED = ("empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "empty_permuted")


def digest(t: torch.Tensor) -> str:
    """12 hex characters of BLAKE2b over the tensor's values in row-major order (layout-independent)."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if t.is_sparse or t.is_quantized or t.is_meta:
        return "?"
    flat = t.reshape(-1)
    if flat.numel() and flat.stride(0) != 1:  # a view, or one element with its parent's stride
        flat = flat.clone(memory_format=torch.contiguous_format)
    b = flat.view(torch.uint8).numpy().tobytes() if t.numel() else b""
    h = hashlib.blake2b(b, digest_size=6)
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    return h.hexdigest()


def _tensors(x: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(x)[0] if isinstance(t, torch.Tensor)]


@dataclass
class Recorder(TorchDispatchMode):
    """Appends ``[op, context, input digests, output digests, output shapes]`` for each op."""
    modules: dict[int, str] = field(default_factory=dict)  # id(module) -> its name in the model
    ops: list[list] = field(default_factory=list)
    _stack: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()

    def context(self) -> str:
        node = torch._C._current_autograd_node()
        if node is not None:  # in backward: the autograd node being run
            return f"backward:{node.name()}"
        return self._stack[-1] if self._stack else ""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        ins = [digest(t) for t in _tensors(args) + _tensors(kwargs)]
        out = func(*args, **kwargs)
        if name in UNINITIALIZED:
            outs, shapes = ["-"], []
        else:
            written = [a for a, s in zip(args, func._schema.arguments)
                       if s.alias_info is not None and s.alias_info.is_write]
            res = _tensors(out) + [t for w in written for t in _tensors(w) if not any(t is o for o in _tensors(out))]
            outs, shapes = [digest(t) for t in res], [list(t.shape) for t in res]
        self.ops.append([str(func), self.context(), ins, outs, shapes])
        return out

    # module context for the forward pass
    def pre(self, module, _inputs) -> None:
        self._stack.append(self.modules.get(id(module), type(module).__name__))

    def post(self, module, _inputs, _output) -> None:
        if self._stack:
            self._stack.pop()


def record(config: str = "gfl_cpu_demo", steps: int = 2, seed: int = 0, data_root: Optional[str] = None,
           data_version: int = 2, overrides: Optional[dict[str, Any]] = None, num_train: int = 1000,
           num_val: int = 200) -> dict[str, Any]:
    """Trace ``steps`` training steps of ``config`` on the synthetic set (as chapter 3 and the sweep
    train it), model set-up included; returns the trace (JSON-ready)."""
    from . import portable
    from ..config import get_config
    from .machine import machine_info
    from ..data.synth import dataset_paths, ensure_dataset, synth_root
    from ..engine.train import TrainOptions, setup, train_epoch
    notebooks = Path(__file__).resolve().parents[2] / "notebooks"  # where synth_root's paths start
    root = Path(data_root) if data_root else Path(os.path.normpath(notebooks / synth_root(data_version)))
    ensure_dataset(root, num_train, num_val, seed=0, progress=False, version=data_version)
    cfg = get_config(config, seed=seed, **(overrides or {}))
    (ann, img) = dataset_paths(root, "train")
    rec = Recorder()
    hooks = [torch.nn.modules.module.register_module_forward_pre_hook(rec.pre),
             torch.nn.modules.module.register_module_forward_hook(rec.post)]
    with tempfile.TemporaryDirectory() as work:
        opts = TrainOptions(str(ann), str(img), work, max_iters=steps, progress=False, tensorboard=False,
                            keep_epoch_checkpoints=False)
        try:
            with rec:
                run = setup(cfg, opts)
            rec.modules = {id(m): n or "model" for n, m in run.model.named_modules()}
            marks = [len(rec.ops)]
            with rec:
                train_epoch(run, 0.0)
        finally:
            for h in hooks:
                h.remove()
            if "run" in locals() and run.log is not None:
                run.log.close()
        log = Path(work) / "log.jsonl"
        losses = [{k: v for k, v in json.loads(ln).items() if k.startswith("loss") or k == "iter"}
                  for ln in log.read_text().splitlines()] if log.exists() else []
    return dict(format=FORMAT, machine=machine_info(), environment={k: os.environ.get(k) for k in (
        *portable.PORTABLE_ISA, "OMP_NUM_THREADS")}, config=config, overrides=overrides or {}, seed=seed,
        steps=steps, data=dict(root=root.name, version=data_version), losses=losses, setup_ops=marks[0], ops=rec.ops)


def save(trace: dict[str, Any], path: str | Path) -> None:
    with gzip.open(path, "wt") as fh:
        json.dump(trace, fh, separators=(",", ":"))


def load(path: str | Path) -> dict[str, Any]:
    with gzip.open(path, "rt") as fh:
        t = json.load(fh)
    if t.get("format") != FORMAT:
        raise ValueError(f"{path}: trace format {t.get('format')}, this gflnb reads {FORMAT}")
    return t


@dataclass
class Parting:
    """The result of :func:`compare`."""
    index: Optional[int]  # the first op whose outputs differ (None: the traces agree)
    kind: str  # "same", "outputs" (inputs agree: this op computes differently), "inputs", "ops" (different op)
    op: Optional[list] = None
    other: Optional[list] = None
    differing: int = 0  # ops whose outputs differ, in all
    first_by_op: dict[str, int] = field(default_factory=dict)  # each op kind's first differing index


def compare(a: dict[str, Any], b: dict[str, Any]) -> Parting:
    """Walk two traces of the same run; the first op whose outputs differ, and why."""
    first: Optional[int] = None
    kind, n, by_op = "same", 0, {}
    for i, (x, y) in enumerate(zip(a["ops"], b["ops"])):
        if x[0] != y[0]:  # the two runs took different paths (data-dependent control flow)
            if first is None:
                first, kind = i, "ops"
            break
        if x[3] != y[3]:
            n += 1
            by_op.setdefault(x[0], i)
            if first is None:
                first, kind = i, ("outputs" if x[2] == y[2] else "inputs")
    if first is None and len(a["ops"]) != len(b["ops"]):
        first, kind = min(len(a["ops"]), len(b["ops"])), "ops"
    return Parting(first, kind, a["ops"][first] if first is not None and first < len(a["ops"]) else None,
                   b["ops"][first] if first is not None and first < len(b["ops"]) else None, n, by_op)


def report(a: dict[str, Any], b: dict[str, Any], p: Parting) -> str:
    def who(t):
        return f"{t['machine']['cpu']}, {t['machine']['isa']}, torch {t['machine']['torch']}, " \
               f"{t['machine']['threads']} thread(s)"
    lines = [f"A: {who(a)}", f"B: {who(b)}"]
    if p.kind == "same":
        return "\n".join(lines + [f"the traces agree: all {len(a['ops'])} ops, the same bytes"])
    phase = "set-up (model init, data)" if p.index < a["setup_ops"] else "training steps"
    lines.append(f"first difference at op {p.index} of {len(a['ops'])} ({phase}): {p.kind}")
    if p.kind == "ops":
        lines.append(f"  A runs {p.op[0] if p.op else '(end)'}, B runs {p.other[0] if p.other else '(end)'}")
    else:
        lines.append(f"  {p.op[0]} in {p.op[1] or '(no module)'}, output shapes {p.op[4]}")
        lines.append("  its inputs agree on both machines: this op computes differently" if p.kind == "outputs"
                     else "  its inputs differ already (an input made outside the trace, e.g. by a loader worker)")
    lines.append(f"ops whose outputs differ: {p.differing}; the first of each kind:")
    lines += [f"  {i:>7}  {op}  ({a['ops'][i][1]})" for op, i in sorted(p.first_by_op.items(), key=lambda kv: kv[1])[:15]]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gflnb.numerics.optrace", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record", help="trace a run's set-up and first steps into OUT (.json.gz)")
    r.add_argument("out")
    r.add_argument("--config", default="gfl_cpu_demo")
    r.add_argument("--steps", type=int, default=2)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--data-root", help="the synthetic set (generated when missing); default data/synth_v2")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override")
    c = sub.add_parser("compare", help="the first op where two traces part")
    c.add_argument("a")
    c.add_argument("b")
    a = ap.parse_args(argv)
    if a.cmd == "record":
        from ..config import parse_set
        t = record(a.config, a.steps, a.seed, a.data_root, overrides=dict(parse_set(s) for s in a.set))
        save(t, a.out)
        print(f"{a.out}: {len(t['ops'])} ops ({t['setup_ops']} in set-up), {t['machine']['cpu']}")
        return 0
    ta, tb = load(a.a), load(a.b)
    p = compare(ta, tb)
    print(report(ta, tb, p))
    return 0 if p.kind == "same" else 1


if __name__ == "__main__":
    sys.exit(main())
