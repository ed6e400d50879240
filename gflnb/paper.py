"""The paper's ablation numbers (GFL, Li et al., NeurIPS 2020, arXiv:2006.04388v1) and its claims.

Copied from ``shared/PAPER_TABLES.md``: COCO minival, ResNet-50-FPN, 1x schedule, mmdetection, the
ATSS column (AP / AP50 / AP75 in %). Rows are keyed by the variant names of
``experiments/ablations/grid.yaml``; ``label`` is the paper's own row name. Only the rows the
grid runs are here (Table 1a's implicit-weighting rows, Table 1c's beta 2.5 and 4 and Table 2a's
Gaussian are not). ``note`` says where the grid's variant differs from the paper's row.
"""
from __future__ import annotations

from typing import Any, Optional

SETTING = "COCO minival, ATSS R-50-FPN, 1x schedule (mmdetection)"

TABLES: dict[str, dict[str, Any]] = {
    "1a": dict(
        title="Table 1(a): how localisation quality is represented",
        note="",
        rows={
            "none": dict(label="no quality branch (focal loss on one-hot labels)", AP=38.0, AP50=56.5, AP75=40.7),
            "centerness": dict(label="separate centerness branch (ATSS as published)", AP=39.2, AP50=57.4,
                               AP75=42.2),
            "iou": dict(label="separate IoU branch", AP=39.6, AP50=57.6, AP75=43.0),
            "gfl": dict(label="joint, trained with QFL", AP=39.9, AP50=58.5, AP75=43.0),
        }),
    "1c": dict(
        title="Table 1(c): the modulating exponent beta of QFL",
        note="The paper also has beta 2.5 (39.7 AP) and beta 4 (38.2 AP); the grid does not run them.",
        rows={
            "beta0": dict(label="beta = 0", AP=37.6, AP50=55.4, AP75=40.3),
            "beta1": dict(label="beta = 1", AP=39.0, AP50=58.1, AP75=41.7),
            "gfl": dict(label="beta = 2 (default)", AP=39.9, AP50=58.5, AP75=43.0),
        }),
    "2a": dict(
        title="Table 2(a): how the box is represented",
        note="The paper's rows keep ATSS's centerness branch (its Dirac row is ATSS as published); here "
             "all three use the joint QFL score.",
        rows={
            "dirac": dict(label="Dirac delta (distances regressed directly)", AP=39.2, AP50=57.4, AP75=42.2),
            "integral": dict(label="general distribution (Integral), GIoU only", AP=39.3, AP50=57.1, AP75=42.5),
            "gfl": dict(label="general distribution with DFL", AP=39.5, AP50=57.3, AP75=42.8),
        }),
    "3": dict(
        title="Table 3: QFL and DFL",
        note="The paper's rows without QFL or DFL equal ATSS as published (centerness branch, Dirac box); "
             "here 'without QFL' is no quality branch (focal loss) and 'without DFL' the Integral with "
             "GIoU only.",
        rows={
            "none_integral": dict(label="QFL -, DFL -", AP=39.2, AP50=57.4, AP75=42.2),
            "integral": dict(label="QFL yes, DFL -", AP=39.9, AP50=58.5, AP75=43.0),
            "none": dict(label="QFL -, DFL yes", AP=39.5, AP50=57.3, AP75=42.8),
            "gfl": dict(label="QFL yes, DFL yes", AP=40.2, AP50=58.6, AP75=43.4),
        }),
    # GFLv2 (arXiv:2011.12885) gives its DGQP only as the README's R-50 1x minival AP, beside GFLv1's
    "v2": dict(
        title="GFLv2 (README, R-50 1x, COCO minival)",
        note="GFLv2's ablation tables were not available as text; AP50 and AP75 are not given.",
        rows={
            "gfl": dict(label="GFLv1", AP=40.2, AP50=None, AP75=None),
            "dgqp": dict(label="GFLv2 (DGQP)", AP=41.0, AP50=None, AP75=None),
        }),
}

# The paper's claims as (better, worse) pairs within one table: "better" beats "worse" in AP.
CLAIMS: list[dict[str, str]] = [
    dict(claim="joint QFL beats no quality branch", table="1a", better="gfl", worse="none"),
    dict(claim="joint beats a separate IoU branch", table="1a", better="gfl", worse="iou"),
    dict(claim="joint beats a separate centerness branch", table="1a", better="gfl", worse="centerness"),
    dict(claim="a separate IoU branch beats a separate centerness branch", table="1a", better="iou",
         worse="centerness"),
    dict(claim="DGQP beats joint QFL (GFLv2)", table="v2", better="dgqp", worse="gfl"),
    dict(claim="beta = 2 beats beta = 0", table="1c", better="gfl", worse="beta0"),
    dict(claim="beta = 2 beats beta = 1", table="1c", better="gfl", worse="beta1"),
    dict(claim="DFL beats the Integral with GIoU only", table="2a", better="gfl", worse="integral"),
    dict(claim="the Integral beats the Dirac delta", table="2a", better="integral", worse="dirac"),
    dict(claim="QFL and DFL together beat neither", table="3", better="gfl", worse="none_integral"),
]


def paper_value(table: str, variant: str, metric: str = "AP") -> Optional[float]:
    """The paper's number for ``variant`` in ``table`` (None where it gives none)."""
    row = TABLES[table]["rows"].get(variant)
    return None if row is None else row.get(metric)


def paper_diff(claim: dict[str, str], metric: str = "AP") -> Optional[float]:
    """The paper's ``better - worse`` difference for a claim, in AP points."""
    a, b = paper_value(claim["table"], claim["better"], metric), paper_value(claim["table"], claim["worse"], metric)
    return None if a is None or b is None else round(a - b, 2)


def label(variant: str) -> str:
    """The paper's name for a variant: its row label in the first table that has it."""
    for t in TABLES.values():
        if variant in t["rows"]:
            return t["rows"][variant]["label"]
    return variant


for _c in CLAIMS:  # every claim names rows that exist
    assert _c["better"] in TABLES[_c["table"]]["rows"] and _c["worse"] in TABLES[_c["table"]]["rows"], _c
