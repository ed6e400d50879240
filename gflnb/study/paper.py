"""The paper's ablation numbers (GFL, Li et al., NeurIPS 2020, arXiv:2006.04388v1), its factorial
design and its claims.

Numbers copied from ``shared/PAPER_TABLES.md``: COCO minival, ResNet-50-FPN, 1x schedule,
mmdetection, the ATSS column (AP / AP50 / AP75 in %). Rows are keyed by the variant names of
``experiments/ablations/grid.yaml``; ``label`` is the paper's own row name. A row that two tables
share (Table 1a's joint QFL is Table 1c's beta 2 and Table 3's "QFL only") is one variant.

:data:`DESIGN` defines each of the 21 variants as the paper does (and :data:`GFLNB_ROWS`, gflnb's own
rows): the config fields it sets over
``gfl_cpu_demo`` (GFL: ``quality='qfl'``, ``box='dfl'``, ``qfl_beta=2``, ``reg_max=16``,
``bin_interval=1``), where in the paper the row is, and where gflnb cannot follow it. Sections
are arXiv v1's: Sec. 3 defines QFL and DFL (and DFL's n), Sec. 4 (Experiment), "Ablation Study",
has one paragraph per table (QFL: Table 1, DFL: Table 2, QFL + DFL: Table 3). gflnb holds the
paper's tables (PAPER_TABLES.md), not its text: where a row needs the text (the implicit rows,
the bin interval), ``departs`` says that the definition is gflnb's reading.

Where gflnb departs from every row alike:
* the detector is the CPU demo (ResNet-18 at 1/4 width, 3 levels, 2-conv head, AdamW, 12 epochs
  from scratch) on the synthetic set (version 2), not ATSS R-50-FPN on COCO;
* "Dirac" is ATSS's box as gflnb has it: four point-to-side distances in stride units (FCOS's
  form, clamped at 0), trained with GIoU (weight 2); ATSS as published regresses anchor deltas
  with the same GIoU loss, one anchor per location either way;
* the separate branches (``centerness``, ``iou``) are ATSSHead's: a 3x3 conv on the regression
  tower, BCE over the positives, multiplied into the class score before NMS.
"""
from __future__ import annotations

from typing import Any, Optional

SETTING = "COCO minival, ATSS R-50-FPN, 1x schedule (mmdetection)"

_T1 = "Sec. 4, Ablation Study, 'Quality Focal Loss (QFL)', Table 1(a)"
_T1C = "Sec. 4, Ablation Study, 'Quality Focal Loss (QFL)', Table 1(c)"
_T2 = "Sec. 4, Ablation Study, 'Distribution Focal Loss (DFL)', Table 2(a)"
_T2B = "Sec. 4, Ablation Study, 'Distribution Focal Loss (DFL)', Table 2(b); n as defined in Sec. 3 (DFL)"
_T2C = "Sec. 4, Ablation Study, 'Distribution Focal Loss (DFL)', Table 2(c)"
_T3 = "Sec. 4, Ablation Study, 'Generalized Focal Loss (QFL + DFL)', Table 3"
_DIRAC = "box 'dirac': distances regressed directly, GIoU only (ATSS's)"

# variant -> dict(config: GFLConfig fields over gfl_cpu_demo, source: where the paper has the row,
# departs: where gflnb cannot follow it ("" where it can, beyond the module notes above))
DESIGN: dict[str, dict[str, Any]] = {
    "none": dict(config=dict(quality="none", box="dirac"), source=_T1 + ", 'None' row",
                 departs=f"focal loss on one-hot labels (alpha .25, gamma 2), {_DIRAC}"),
    "centerness": dict(config=dict(quality="centerness", box="dirac"),
                       source=_T1 + ", 'Separate / Centerness'; Table 2(a) 'Dirac'; Table 3 '-/-' (ATSS as "
                              "published, 39.2 in all three)",
                       departs=f"the centerness target also weights GIoU (ATSSHead); {_DIRAC}"),
    "iou": dict(config=dict(quality="iou", box="dirac"), source=_T1 + ", 'Separate / IoU'",
                departs=f"the branch's BCE target is the detached IoU of the decoded box; GIoU weight 1; {_DIRAC}"),
    "centerness_guided": dict(
        config=dict(quality="centerness_guided", box="dirac"), source=_T1 + ", 'Implicit / Centerness'",
        departs="gflnb's reading of 'implicit' (the table's name for it, without the text): no branch; each "
                "positive anchor's focal-loss term is weighted by its centerness target, the class score "
                f"alone ranks at test time; GIoU weighted by centerness as ATSS's; {_DIRAC}"),
    "iou_guided": dict(
        config=dict(quality="iou_guided", box="dirac"), source=_T1 + ", 'Implicit / IoU'",
        departs="as centerness_guided, the weight being the detached IoU of the decoded box; GIoU weight 1; "
                + _DIRAC),
    "qfl_dirac": dict(config=dict(quality="qfl", box="dirac"),
                      source=_T1 + ", 'Joint / IoU'; Table 1(c) beta = 2; Table 3 'QFL yes, DFL -'",
                      departs=f"GIoU weighted by the max class score, as GFL's; {_DIRAC}"),
    "beta0": dict(config=dict(quality="qfl", box="dirac", qfl_beta=0.0), source=_T1C + ", beta = 0", departs=_DIRAC),
    "beta1": dict(config=dict(quality="qfl", box="dirac", qfl_beta=1.0), source=_T1C + ", beta = 1", departs=_DIRAC),
    "beta2.5": dict(config=dict(quality="qfl", box="dirac", qfl_beta=2.5), source=_T1C + ", beta = 2.5",
                    departs=_DIRAC),
    "beta4": dict(config=dict(quality="qfl", box="dirac", qfl_beta=4.0), source=_T1C + ", beta = 4", departs=_DIRAC),
    "centerness_gaussian": dict(
        config=dict(quality="centerness", box="gaussian"),
        source=_T2 + ", 'Gaussian' (its reference: He et al., CVPR 2019, 'Bounding box regression with "
                     "uncertainty', KL loss)",
        departs="a mean and a log-variance per side; GIoU on the means (as every Table 2(a) row) plus He et "
                "al.'s KL loss, weighted as DFL (loss_dfl_weight 0.25: the paper gives no weight); the variance "
                "is not used at test time (no variance voting)"),
    "centerness_integral": dict(config=dict(quality="centerness", box="integral"),
                                source=_T2 + ", 'General / Integral, GIoU only'", departs=""),
    "centerness_dfl": dict(config=dict(quality="centerness", box="dfl"),
                           source=_T2 + ", 'General with DFL'; Table 3 'QFL -, DFL yes'", departs=""),
    "gfl": dict(config=dict(), source=_T3 + " 'yes/yes'; Table 2(b) n = 16; Table 2(c) interval 1; GFLv2's "
                                            "README GFLv1 row", departs=""),
    "n12": dict(config=dict(reg_max=12), source=_T2B + ", n = 12",
                departs="n = reg_max: Sec. 3 discretises [y0, yn] into the n + 1 values y0..yn (interval 1), "
                        "so n = 16 is mmdetection's reg_max = 16 with its 17 bins (GFL_SPEC 2.3); targets are "
                        "clamped to n - 0.1 strides"),
    "n14": dict(config=dict(reg_max=14), source=_T2B + ", n = 14", departs="n = reg_max, as n12"),
    "n18": dict(config=dict(reg_max=18), source=_T2B + ", n = 18", departs="n = reg_max, as n12"),
    "interval0.5": dict(config=dict(bin_interval=0.5), source=_T2C + ", interval 0.5",
                        departs="gflnb's reading: n = 16 bins kept, each bin_interval strides wide, so the range "
                                "is 16 x interval strides (8 at 0.5: longer sides clamp to 7.95); the other reading "
                                "(a fixed range of 16 strides, 16 / interval bins) is not run"),
    "interval2": dict(config=dict(bin_interval=2.0), source=_T2C + ", interval 2", departs="as interval0.5"),
    "interval4": dict(config=dict(bin_interval=4.0), source=_T2C + ", interval 4", departs="as interval0.5"),
    "dgqp": dict(config=dict(quality="dgqp"),
                 source="GFLv2 (arXiv:2011.12885), Sec. 3 (DGQP); its README's R-50 1x minival AP",
                 departs="GFocalV2's head on GFL's; QFL on the joint score computed from its log and the box "
                         "losses divided by any nonzero weight sum (gflnb's fixes of two numeric faults); the "
                         "box-loss weights detached from the DGQP as GFocalV2's cls_score.detach()"),
    "dgqp_weight_grad": dict(
        config=dict(quality="dgqp", dgqp_weight_grad=True),
        source="not a paper row: gflnb's DGQP before issue 18 (experiments/dgqp/README.md)",
        departs="the box-loss weights (the positives' joint scores) keep the DGQP's parameters in the graph, "
                "so GIoU and DFL, divided by the weights' detached sum, push the quality logit down: every "
                "joint score goes to 0. Shown beside 'dgqp' as the collapse the fix removes"),
}
# DESIGN's rows that are gflnb's, not the paper's (the 21 others are the paper's factorial design)
GFLNB_ROWS = ("dgqp_weight_grad",)


def _ap_only(label: str, ap: float) -> dict[str, Any]:
    """A row for which the paper gives AP alone."""
    return dict(label=label, AP=ap, AP50=None, AP75=None)


TABLES: dict[str, dict[str, Any]] = {
    "1a": dict(
        title="Table 1(a): how localisation quality is represented (Dirac box)",
        note="All rows regress the box directly (Dirac), as ATSS does. The implicit rows are gflnb's reading: "
             "the quality weights each positive's classification loss, with no branch.",
        rows={
            "none": dict(label="no quality branch (focal loss on one-hot labels)", AP=38.0, AP50=56.5, AP75=40.7),
            "centerness": dict(label="separate centerness branch (ATSS as published)", AP=39.2, AP50=57.4,
                               AP75=42.2),
            "iou": dict(label="separate IoU branch", AP=39.6, AP50=57.6, AP75=43.0),
            "centerness_guided": dict(label="centerness-guided (implicit weighting)", AP=38.2, AP50=56.2,
                                      AP75=41.0),
            "iou_guided": dict(label="IoU-guided (implicit weighting)", AP=38.9, AP50=57.4, AP75=41.8),
            "qfl_dirac": dict(label="joint, trained with QFL", AP=39.9, AP50=58.5, AP75=43.0),
        }),
    "1c": dict(
        title="Table 1(c): the modulating exponent beta of QFL (joint score, Dirac box)",
        note="",
        rows={
            "beta0": dict(label="beta = 0", AP=37.6, AP50=55.4, AP75=40.3),
            "beta1": dict(label="beta = 1", AP=39.0, AP50=58.1, AP75=41.7),
            "qfl_dirac": dict(label="beta = 2 (default)", AP=39.9, AP50=58.5, AP75=43.0),
            "beta2.5": dict(label="beta = 2.5", AP=39.7, AP50=58.1, AP75=42.7),
            "beta4": dict(label="beta = 4", AP=38.2, AP50=55.4, AP75=41.6),
        }),
    "2a": dict(
        title="Table 2(a): how the box is represented (centerness branch)",
        note="All rows keep ATSS's centerness branch; the Dirac row is ATSS as published. The Integral and "
             "the Gaussian tie in the paper (39.3): no claim between them.",
        rows={
            "centerness": dict(label="Dirac delta (distances regressed directly)", AP=39.2, AP50=57.4, AP75=42.2),
            "centerness_gaussian": dict(label="Gaussian", AP=39.3, AP50=57.0, AP75=42.4),
            "centerness_integral": dict(label="general distribution (Integral), GIoU only", AP=39.3, AP50=57.1,
                                        AP75=42.5),
            "centerness_dfl": dict(label="general distribution with DFL", AP=39.5, AP50=57.3, AP75=42.8),
        }),
    "2b": dict(
        title="Table 2(b): the number of bins n (GFL, interval 1)",
        note="n = reg_max (n + 1 values y0..yn). The paper gives AP only; n = 14 and 16 tie (40.2): no claim "
             "between them.",
        rows={
            "n12": _ap_only("n = 12", 40.1),
            "n14": _ap_only("n = 14", 40.2),
            "gfl": _ap_only("n = 16 (default)", 40.2),
            "n18": _ap_only("n = 18", 40.1),
        }),
    "2c": dict(
        title="Table 2(c): the bins' width, in strides (GFL, n = 16)",
        note="The paper gives AP only; intervals 0.5 and 1 tie (40.2): no claim between them.",
        rows={
            "interval0.5": _ap_only("interval 0.5", 40.2),
            "gfl": _ap_only("interval 1 (default)", 40.2),
            "interval2": _ap_only("interval 2", 39.9),
            "interval4": _ap_only("interval 4", 39.8),
        }),
    "3": dict(
        title="Table 3: QFL and DFL on ATSS",
        note="Without QFL is ATSS's centerness branch, without DFL the Dirac box: the '-/-' row is ATSS as "
             "published (Table 1(a)'s centerness row), 'QFL only' Table 1(a)'s joint row and 'DFL only' "
             "Table 2(a)'s DFL row.",
        rows={
            "centerness": dict(label="QFL -, DFL -", AP=39.2, AP50=57.4, AP75=42.2),
            "qfl_dirac": dict(label="QFL yes, DFL -", AP=39.9, AP50=58.5, AP75=43.0),
            "centerness_dfl": dict(label="QFL -, DFL yes", AP=39.5, AP50=57.3, AP75=42.8),
            "gfl": dict(label="QFL yes, DFL yes", AP=40.2, AP50=58.6, AP75=43.4),
        }),
    # GFLv2 (arXiv:2011.12885) gives its DGQP only as the README's R-50 1x minival AP, beside GFLv1's
    "v2": dict(
        title="GFLv2 (README, R-50 1x, COCO minival)",
        note="GFLv2's ablation tables were not available as text; AP50 and AP75 are not given.",
        rows={
            "gfl": _ap_only("GFLv1", 40.2),
            "dgqp": _ap_only("GFLv2 (DGQP)", 41.0),
            "dgqp_weight_grad": dict(label="DGQP, box-loss weights not detached (gflnb before issue 18)", AP=None,
                                     AP50=None, AP75=None),
        }),
}

# The paper's claims as (better, worse) pairs within one table: "better" beats "worse" in AP. Each
# table's rows against its proposed or default row, plus the comparisons the paper draws between
# the others (IoU against centerness as the quality; a separate branch against implicit weighting;
# the general distribution and the Gaussian against the Dirac delta). Ties in the paper are no claim.
# A pair that two tables share is one claim; ``also`` names the other table.
CLAIMS: list[dict[str, Any]] = [
    dict(claim="joint QFL beats no quality branch", table="1a", better="qfl_dirac", worse="none"),
    dict(claim="joint beats a separate IoU branch", table="1a", better="qfl_dirac", worse="iou"),
    dict(claim="joint beats a separate centerness branch", table="1a", better="qfl_dirac", worse="centerness",
         also=["3"]),  # Table 3: QFL alone beats neither
    dict(claim="joint beats IoU-guided implicit weighting", table="1a", better="qfl_dirac", worse="iou_guided"),
    dict(claim="joint beats centerness-guided implicit weighting", table="1a", better="qfl_dirac",
         worse="centerness_guided"),
    dict(claim="a separate IoU branch beats a separate centerness branch", table="1a", better="iou",
         worse="centerness"),
    dict(claim="IoU-guided beats centerness-guided implicit weighting", table="1a", better="iou_guided",
         worse="centerness_guided"),
    dict(claim="a separate IoU branch beats IoU-guided implicit weighting", table="1a", better="iou",
         worse="iou_guided"),
    dict(claim="a separate centerness branch beats centerness-guided implicit weighting", table="1a",
         better="centerness", worse="centerness_guided"),
    dict(claim="beta = 2 beats beta = 0", table="1c", better="qfl_dirac", worse="beta0"),
    dict(claim="beta = 2 beats beta = 1", table="1c", better="qfl_dirac", worse="beta1"),
    dict(claim="beta = 2 beats beta = 2.5", table="1c", better="qfl_dirac", worse="beta2.5"),
    dict(claim="beta = 2 beats beta = 4", table="1c", better="qfl_dirac", worse="beta4"),
    dict(claim="DFL beats the Integral with GIoU only", table="2a", better="centerness_dfl",
         worse="centerness_integral"),
    dict(claim="DFL beats the Gaussian", table="2a", better="centerness_dfl", worse="centerness_gaussian"),
    dict(claim="DFL beats the Dirac delta", table="2a", better="centerness_dfl", worse="centerness",
         also=["3"]),  # Table 3: DFL alone beats neither
    dict(claim="the Integral beats the Dirac delta", table="2a", better="centerness_integral", worse="centerness"),
    dict(claim="the Gaussian beats the Dirac delta", table="2a", better="centerness_gaussian", worse="centerness"),
    dict(claim="n = 16 beats n = 12", table="2b", better="gfl", worse="n12"),
    dict(claim="n = 16 beats n = 18", table="2b", better="gfl", worse="n18"),
    dict(claim="interval 1 beats interval 2", table="2c", better="gfl", worse="interval2"),
    dict(claim="interval 1 beats interval 4", table="2c", better="gfl", worse="interval4"),
    dict(claim="QFL and DFL together beat neither", table="3", better="gfl", worse="centerness"),
    dict(claim="QFL and DFL together beat QFL alone", table="3", better="gfl", worse="qfl_dirac"),
    dict(claim="QFL and DFL together beat DFL alone", table="3", better="gfl", worse="centerness_dfl"),
    dict(claim="DGQP beats joint QFL (GFLv2)", table="v2", better="dgqp", worse="gfl"),
]


# The paper's ties: two rows of one table with the same AP. They make no claim of order, but they do
# say that the change does not matter, which an equivalence test (TOST) can check.
TIES: list[dict[str, Any]] = [
    dict(tie="n = 14 ties n = 16", table="2b", a="n14", b="gfl"),
    dict(tie="bin interval 0.5 ties interval 1", table="2c", a="interval0.5", b="gfl"),
    dict(tie="the Integral (GIoU only) ties the Gaussian", table="2a", a="centerness_integral",
         b="centerness_gaussian"),
]


def paper_value(table: str, variant: str, metric: str = "AP") -> Optional[float]:
    """The paper's number for ``variant`` in ``table`` (None where it gives none)."""
    row = TABLES[table]["rows"].get(variant)
    return None if row is None else row.get(metric)


def paper_diff(claim: dict[str, Any], metric: str = "AP") -> Optional[float]:
    """The paper's ``better - worse`` difference for a claim, in AP points."""
    a, b = paper_value(claim["table"], claim["better"], metric), paper_value(claim["table"], claim["worse"], metric)
    return None if a is None or b is None else round(a - b, 2)


def label(variant: str) -> str:
    """The paper's name for a variant: its row label in the first table that has it."""
    for t in TABLES.values():
        if variant in t["rows"]:
            return t["rows"][variant]["label"]
    return variant


for _c in CLAIMS:  # every claim names rows that exist, in its table and in those it also stands for
    for _t in [_c["table"], *_c.get("also", [])]:
        assert _c["better"] in TABLES[_t]["rows"] and _c["worse"] in TABLES[_t]["rows"], _c
    assert paper_diff(_c) is not None and paper_diff(_c) > 0, _c  # a tie or a reversal is no claim
assert len({(_c["better"], _c["worse"]) for _c in CLAIMS}) == len(CLAIMS), "one claim per pair"
assert set(DESIGN) == {v for _t in TABLES.values() for v in _t["rows"]}, "every row is a defined variant"
for _t in TIES:  # a tie is two rows of one table with the same AP
    assert paper_value(_t["table"], _t["a"]) == paper_value(_t["table"], _t["b"]) is not None, _t
