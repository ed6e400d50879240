"""COCO loading on a small file the test writes, label mapping, transforms and batching."""
import json

import cv2
import numpy as np
import pytest
import torch

from gflnb.config import get_config
from gflnb.data.coco import CocoDetection, DataError, epoch_batches


def write_coco(tmp_path, images, anns, cats):
    img_dir = tmp_path / "imgs"
    img_dir.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for im in images:
        cv2.imwrite(str(img_dir / im["file_name"]), rng.integers(0, 255, (im["height"], im["width"], 3), dtype=np.uint8))
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(dict(images=images, annotations=anns, categories=cats)))
    return ann, img_dir


@pytest.fixture
def small_coco(tmp_path):
    images = [dict(id=10, file_name="a.png", width=64, height=48), dict(id=11, file_name="b.png", width=40, height=80),
              dict(id=12, file_name="empty.png", width=50, height=50), dict(id=13, file_name="crowd.png", width=60, height=60),
              dict(id=14, file_name="small.png", width=20, height=20)]
    cats = [dict(id=9, name="nine"), dict(id=2, name="two"), dict(id=5, name="five")]
    anns = [dict(id=1, image_id=10, category_id=9, bbox=[4, 5, 20, 10], area=200, iscrowd=0),
            dict(id=2, image_id=10, category_id=2, bbox=[30, 6, 0.5, 10], area=5, iscrowd=0),  # under 1 px
            dict(id=3, image_id=10, category_id=5, bbox=[100, 100, 5, 5], area=25, iscrowd=0),  # outside
            dict(id=4, image_id=11, category_id=5, bbox=[0, 0, 40, 80], area=3200, iscrowd=0),
            dict(id=5, image_id=13, category_id=2, bbox=[1, 1, 30, 30], area=900, iscrowd=1),  # crowd only
            dict(id=6, image_id=14, category_id=2, bbox=[1, 1, 10, 10], area=100, iscrowd=0)]
    return write_coco(tmp_path, images, anns, cats)


def test_labels_follow_sorted_category_ids_and_round_trip(small_coco):
    ann, img_dir = small_coco
    with pytest.warns(UserWarning, match="2 boxes skipped"):
        ds = CocoDetection(ann, img_dir, get_config("gfl_cpu_demo", num_classes=3), train=False)
    assert ds.cat_ids == [2, 5, 9] and ds.class_names == ["two", "five", "nine"]
    assert all(ds.cat2label[ds.label2cat[i]] == i for i in range(3))
    rec = {r.img_id: r for r in ds.records}
    assert rec[10].labels.tolist() == [2] and rec[10].boxes.tolist() == [[4, 5, 24, 15]]
    assert len(rec[13].boxes) == 0  # crowd not used as a gt
    assert len(ds) == 5  # evaluation keeps every image


def test_training_filters_empty_and_small_images(small_coco):
    ann, img_dir = small_coco
    with pytest.warns(UserWarning):
        ds = CocoDetection(ann, img_dir, get_config("gfl_cpu_demo", num_classes=3, min_size=32), train=True)
    # empty.png has no annotation; small.png is under min_size; crowd.png keeps (mmdet: has an annotation)
    assert sorted(r.img_id for r in ds.records) == [10, 11, 13]


def test_transforms_resize_clip_and_flip(small_coco):
    ann, img_dir = small_coco
    cfg = get_config("gfl_cpu_demo", num_classes=3, img_scale=(128, 96), flip_prob=1.0)
    with pytest.warns(UserWarning):
        ds = CocoDetection(ann, img_dir, cfg, train=True)
    s = ds[0]  # a.png 64x48 -> 128x96, flipped
    assert s["meta"]["img_shape"] == (96, 128) and s["meta"]["scale_factor"] == (2.0, 2.0) and s["meta"]["flip"]
    assert s["boxes"].tolist() == [[128 - 48, 10, 128 - 8, 30]]
    assert s["img"].shape == (3, 96, 128) and s["img"].dtype == torch.uint8
    img = cv2.resize(cv2.imread(str(img_dir / "a.png")), (128, 96), interpolation=cv2.INTER_LINEAR)[:, ::-1]
    assert torch.equal(s["img"], torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))))
    with pytest.warns(UserWarning):
        ds_eval = CocoDetection(ann, img_dir, cfg, train=False)
    assert not ds_eval[0]["meta"]["flip"]


def test_multiscale_draws_short_side_in_range(small_coco):
    ann, img_dir = small_coco
    cfg = get_config("gfl_cpu_demo", num_classes=3, img_scale=(1333, 800), ms_short_range=(48, 96))
    with pytest.warns(UserWarning):
        ds = CocoDetection(ann, img_dir, cfg, train=True)
    sizes = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        sizes.add(min(ds[0]["meta"]["img_shape"]))
    assert len(sizes) > 1 and all(48 <= s <= 96 for s in sizes)


@pytest.mark.parametrize("bad,match", [
    ("not json", "not valid JSON"),
    (json.dumps(dict(images=[])), "lacks 'annotations', 'categories'"),
    (json.dumps(dict(images=[dict(id=1, file_name="a", width=5, height=5)], categories=[dict(id=1, name="x")],
                     annotations=[dict(id=7, image_id=2, category_id=1, bbox=[0, 0, 1, 1])])), "unknown image id 2"),
    (json.dumps(dict(images=[dict(id=1, file_name="a", width=5, height=5)], categories=[dict(id=1, name="x")],
                     annotations=[dict(id=7, image_id=1, category_id=3, bbox=[0, 0, 1, 1])])), "unknown category id 3"),
    ('{"images": [{"id": 1, "file_name": "a", "width": 5, "height": 5}], "categories": [{"id": 1}], '
     '"annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [0, NaN, 1, 1]}]}', "non-finite bbox"),
])
def test_bad_annotation_files_give_clear_errors(tmp_path, bad, match):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "ann.json").write_text(bad)
    with pytest.raises(DataError, match=match):
        CocoDetection(tmp_path / "ann.json", tmp_path / "imgs", get_config("gfl_cpu_demo"))


def test_missing_and_corrupt_images_name_the_image(tmp_path):
    images = [dict(id=1, file_name="gone.png", width=40, height=40), dict(id=2, file_name="bad.png", width=40, height=40)]
    anns = [dict(id=1, image_id=1, category_id=1, bbox=[1, 1, 10, 10], area=100, iscrowd=0),
            dict(id=2, image_id=2, category_id=1, bbox=[1, 1, 10, 10], area=100, iscrowd=0)]
    ann, img_dir = write_coco(tmp_path, images, anns, [dict(id=1, name="x")])
    (img_dir / "gone.png").unlink()
    (img_dir / "bad.png").write_bytes(b"not an image at all")
    ds = CocoDetection(ann, img_dir, get_config("gfl_cpu_demo", num_classes=1), train=True)
    with pytest.raises(DataError, match="image 1: image file not found.*gone.png"):
        ds[0]
    with pytest.raises(DataError, match="image 2: cannot decode image.*bad.png"):
        ds[1]


def test_epoch_batches_group_by_aspect_and_cover_everything():
    groups = np.array([0, 1] * 13 + [1])
    b = epoch_batches(groups, 4, seed=3, epoch=1)
    assert b == epoch_batches(groups, 4, seed=3, epoch=1)
    assert b != epoch_batches(groups, 4, seed=3, epoch=2)
    flat = sorted(i for x in b for i in x)
    assert flat == list(range(len(groups)))
    full = [x for x in b if len(x) == 4]
    assert all(len(set(groups[x])) == 1 for x in full)
    shards = [epoch_batches(groups, 2, 0, 0, rank=r, world=3) for r in range(3)]
    assert set(i for s in shards for x in s for i in x) == set(range(len(groups)))


def test_reads_a_coco_set_gflnb_did_not_write(tmp_path):
    """benchmarks/glyphs.py: other category ids, PNGs, portrait and landscape images, crowd regions."""
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("glyphs", Path(__file__).parents[1] / "benchmarks" / "glyphs.py")
    glyphs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(glyphs)
    glyphs.write_split(tmp_path, "train", 40, np.random.default_rng(3), 1000)
    ann = tmp_path / "annotations" / "instances_train.json"
    coco = json.loads(ann.read_text())
    assert any(a["iscrowd"] for a in coco["annotations"])
    cfg = get_config("gfl_cpu_demo", num_classes=5)
    ds = CocoDetection(ann, tmp_path / "train", cfg, train=False)
    assert ds.num_classes == 5 and [ds.label2cat[i] for i in range(5)] == [1, 2, 5, 17, 90]
    assert set(ds.aspect_groups().tolist()) == {0, 1}  # both orientations
    # crowd regions are ignored; so are glyphs under 1 px, as in mmdet (none expected here)
    assert sum(len(ds[i]["labels"]) for i in range(len(ds))) == sum(1 for a in coco["annotations"] if not a["iscrowd"])
