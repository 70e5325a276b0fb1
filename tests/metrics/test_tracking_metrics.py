"""Tracking metrics on hand-built sequences with known answers, plus a brute-force association check."""
from __future__ import annotations

import itertools
import json
import math
import random

import numpy as np
import pytest

from sparse4d.errors import DataError
from sparse4d.metrics import boxes_to_results, evaluate_tracking, gt_from_boxes, yaw_to_quaternion


def box(x, y):
    return [x, y, 0.5, 1.0, 2.0, 1.5, 0.0, 1.0, 0.0, 0.0]


def det(x, y, track_id, score=0.9, name="car"):
    return {"translation": [x, y, 0.5], "size": [1.0, 2.0, 1.5], "rotation": yaw_to_quaternion(0.0),
            "velocity": [1.0, 0.0], "detection_name": name, "detection_score": score,
            "tracking_id": track_id, "tracking_score": score}


def two_cars(num_frames=5):
    """Two cars driving along y=0 and y=5, annotated in every frame of scene 'a'."""
    gt, frames = {}, {"a": []}
    for f in range(num_frames):
        token = f"a/{f}"
        frames["a"].append(token)
        gt[token] = gt_from_boxes([box(f, 0), box(f, 5)], ["car", "car"], [1, 2])
    return gt, frames


def test_perfect_tracks_score_1():
    gt, frames = two_cars()
    preds = {t: [det(b["translation"][0], b["translation"][1], 100 + b["instance_id"], score=0.6 + 0.1 * i)
                 for i, b in enumerate(boxes)] for t, boxes in gt.items()}
    m = evaluate_tracking(gt, preds, frames, ["car"])
    assert m.amota == pytest.approx(1.0)
    assert m.amotp == pytest.approx(0.0)
    assert m.mota == pytest.approx(1.0)
    assert m.idf1 == pytest.approx(1.0)
    assert m.ids == 0 and m.fp == 0 and m.fn == 0 and m.tp == 10
    assert m.class_metrics["car"]["threshold"] == pytest.approx(0.6)  # best MOTA at the lowest threshold


def test_identity_swap_counts_switches_and_lowers_idf1():
    # Frames 0-2: ids 10 / 20 follow cars 1 / 2; frames 3-4 the ids swap. The swap frame gives two
    # switches; frame 4 keeps the new pairs. MOTA = 1 - 2/10. IDF1: best one-to-one id pairing covers
    # 3 + 3 frames of 10 annotations and 10 predictions: 2 * 6 / 20 = 0.6.
    gt, frames = two_cars()
    preds = {}
    for f, token in enumerate(frames["a"]):
        ids = [10, 20] if f < 3 else [20, 10]
        preds[token] = boxes_to_results(np.array([box(f, 0), box(f, 5)]), [0.9, 0.8], ["car", "car"], ids)
    m = evaluate_tracking(gt, preds, frames, ["car"])
    assert m.ids == 2 and m.tp == 8 and m.fp == 0 and m.fn == 0
    assert m.mota == pytest.approx(0.8)
    assert m.idf1 == pytest.approx(0.6)
    # Track scores are averaged (10: 0.86, 20: 0.84). Matches reach recall 0.8 only (switches are not
    # matches), so 31 of the 40 recall points (0.1 + k*0.9/39 <= 0.8) are reached, each with MOTAR 1.
    assert m.amota == pytest.approx(31 / 40)
    assert m.class_metrics["car"]["threshold"] == pytest.approx(0.84)


def test_amota_worked_example_with_a_false_track():
    # Car 1 tracked in all 10 frames at score 0.9, car 2 at 0.6, a false track F at 0.7 in 5 frames.
    # Matched scores: ten 0.9 then ten 0.6, P = 20. Recall targets 0.1 + k*0.9/39 (k = 0..39):
    #   k <= 17 (r <= 0.5): threshold 0.9, car 1 only: MOTAR = 1 - (10 - 0.5*20)/10 = 1
    #   k = 18 (r = 0.515): threshold 0.808 (interpolated), same boxes: MOTAR 1
    #   k = 19 (r = 0.538): threshold 0.669: car 1 + F: MOTAR = 1 - (10 + 5 - 10)/10 = 0.5
    #   k >= 20 (r >= 0.55): threshold 0.6: everything: MOTAR = 1 - 5/20 = 0.75
    # AMOTA = (19 + 0.5 + 20 * 0.75) / 40. Best MOTA is at 0.6: 1 - 5/20.
    gt, preds, frames = {}, {}, {"s": []}
    for f in range(10):
        token = f"s/{f}"
        frames["s"].append(token)
        gt[token] = gt_from_boxes([box(f, 0), box(f, 6)], ["car", "car"], [1, 2])
        preds[token] = [det(f, 0, "one", 0.9), det(f, 6, "two", 0.6)] + ([det(f, -6, "F", 0.7)] if f < 5 else [])
    m = evaluate_tracking(gt, preds, frames, ["car"])
    assert m.amota == pytest.approx((19 + 0.5 + 20 * 0.75) / 40)
    assert m.mota == pytest.approx(0.75)
    assert m.class_metrics["car"]["threshold"] == pytest.approx(0.6)
    assert m.fp == 5 and m.tp == 20
    # A fixed threshold overrides the choice for MOTA and the counts, not AMOTA.
    fixed = evaluate_tracking(gt, preds, frames, ["car"], score_threshold=0.8)
    assert fixed.mota == pytest.approx(0.5) and fixed.fn == 10 and fixed.amota == pytest.approx(m.amota)


def test_fragmented_track():
    gt, frames = {}, {"s": []}
    preds = {}
    for f in range(10):
        token = f"s/{f}"
        frames["s"].append(token)
        gt[token] = gt_from_boxes([box(f, 0)], ["car"], ["obj"])
        preds[token] = [det(f + 0.3, 0, "A" if f < 4 else "B")]
    m = evaluate_tracking(gt, preds, frames, ["car"])
    assert m.ids == 1
    assert m.mota == pytest.approx(0.9)
    assert m.motp == pytest.approx(0.3)
    assert m.idf1 == pytest.approx(2 * 6 / 20)


def test_established_pair_is_kept_even_if_another_prediction_is_closer():
    # Frame 0: id A matches the car. Frame 1: A is 1.5 m away, B right on it: A is kept (no switch),
    # B is a false positive. MOTP = (0 + 1.5) / 2.
    gt = {"f0": gt_from_boxes([box(0, 0)], ["car"], [1]), "f1": gt_from_boxes([box(1, 0)], ["car"], [1])}
    preds = {"f0": [det(0, 0, "A")], "f1": [det(2.5, 0, "A"), det(1.0, 0, "B")]}
    m = evaluate_tracking(gt, preds, {"s": ["f0", "f1"]}, ["car"], score_threshold=0.0)
    assert m.ids == 0 and m.fp == 1 and m.tp == 2
    assert m.motp == pytest.approx(0.75)
    assert m.mota == pytest.approx(0.5)


def test_false_positives_clip_mota_at_zero_and_distance_2m_is_not_a_match():
    gt = {"f0": gt_from_boxes([box(0, 0)], ["car"], [1])}
    preds = {"f0": [det(2.0, 0, "far"), det(9, 9, "x"), det(-9, 9, "y")]}
    m = evaluate_tracking(gt, preds, {"s": ["f0"]}, ["car"], score_threshold=0.0)
    assert m.tp == 0 and m.fp == 3 and m.fn == 1
    assert m.mota == 0.0  # 1 - 4/1 clipped
    assert m.amota == 0.0 and m.amotp == pytest.approx(2.0)  # no recall reached: worst values


def test_class_without_gt_is_nan_and_left_out():
    gt, frames = two_cars()
    preds = {t: [det(b["translation"][0], b["translation"][1], b["instance_id"]) for b in boxes]
             for t, boxes in gt.items()}
    preds["a/0"].append(det(30, 30, "p", name="pedestrian"))
    m = evaluate_tracking(gt, preds, frames, ["car", "pedestrian"])
    assert math.isnan(m.class_metrics["pedestrian"]["amota"])
    assert m.amota == pytest.approx(1.0) and m.mota == pytest.approx(1.0)
    d = json.loads(json.dumps(m.to_dict(), allow_nan=False))
    assert d["class_metrics"]["pedestrian"]["amota"] is None
    assert "pedestrian" in m.format_table()


def test_empty_predictions_and_empty_gt():
    gt, frames = two_cars()
    m = evaluate_tracking(gt, {}, frames, ["car"])
    assert m.amota == 0.0 and m.mota == 0.0 and m.idf1 == 0.0 and m.fn == 10
    empty_gt = {t: [] for t in gt}
    m2 = evaluate_tracking(empty_gt, {"a/0": [det(0, 0, 1)]}, frames, ["car"])
    assert math.isnan(m2.amota) and math.isnan(m2.mota)


def test_scenes_are_independent():
    # The same ids in two scenes are different tracks: no switch when scene b starts.
    gt, preds, frames = {}, {}, {"a": [], "b": []}
    for scene in ("a", "b"):
        for f in range(3):
            token = f"{scene}/{f}"
            frames[scene].append(token)
            gt[token] = gt_from_boxes([box(f, 0)], ["car"], [1])
            preds[token] = [det(f, 0, "A" if scene == "a" else "B")]
    m = evaluate_tracking(gt, preds, frames, ["car"])
    assert m.ids == 0 and m.idf1 == pytest.approx(1.0)


def test_bad_frames_and_ids_raise():
    gt, frames = two_cars(2)
    with pytest.raises(DataError, match="belong to no scene"):
        evaluate_tracking(gt, {}, {"a": ["a/0"]}, ["car"])
    with pytest.raises(DataError, match="does not have"):
        evaluate_tracking(gt, {}, {"a": ["a/0", "a/1", "zzz"]}, ["car"])
    with pytest.raises(DataError, match="listed in scenes"):
        evaluate_tracking(gt, {}, {"a": ["a/0", "a/1"], "b": ["a/1"]}, ["car"])
    bad = det(0, 0, None)
    with pytest.raises(DataError, match="tracking_id"):
        evaluate_tracking(gt, {"a/0": [bad]}, frames, ["car"])


# ---------------------------------------------------------------------------------------------
# Brute force: the CLEAR-MOT association with an exhaustive search instead of the Hungarian solver.
# ---------------------------------------------------------------------------------------------

def _best_assignment(pairs_allowed, dist, n_gt, n_pred):
    """Exhaustive: most pairs, then least total distance."""
    best, best_key = [], (0, 0.0)
    rows = [i for i in range(n_gt)]
    for k in range(min(n_gt, n_pred), 0, -1):
        for gsub in itertools.combinations(rows, k):
            for psub in itertools.permutations(range(n_pred), k):
                if all(pairs_allowed[g][p] for g, p in zip(gsub, psub)):
                    key = (k, -sum(dist[g][p] for g, p in zip(gsub, psub)))
                    if not best or key > best_key:
                        best, best_key = list(zip(gsub, psub)), key
        if best:
            return best
    return best


def _brute_clear_mot(scene_frames):
    """scene_frames: list of scenes, each a list of (gt [(id, x, y)], pred [(id, x, y)])."""
    matches = switches = fp = fn = n_gt = n_pred = 0
    idtp = 0
    for frames in scene_frames:
        last = {}
        co = {}
        for gts, prs in frames:
            n_gt += len(gts)
            n_pred += len(prs)
            dist = [[math.dist(g[1:], p[1:]) for p in prs] for g in gts]
            ok = [[d < 2.0 for d in row] for row in dist]
            for i, g in enumerate(gts):
                for j, p in enumerate(prs):
                    if ok[i][j]:
                        co[(g[0], p[0])] = co.get((g[0], p[0]), 0) + 1
            used_g, used_p = set(), set()
            for i, g in enumerate(gts):
                if g[0] in last:
                    for j, p in enumerate(prs):
                        if j not in used_p and p[0] == last[g[0]]:
                            if ok[i][j]:
                                used_g.add(i), used_p.add(j)
                                matches += 1
                            break
            rest_g = [i for i in range(len(gts)) if i not in used_g]
            rest_p = [j for j in range(len(prs)) if j not in used_p]
            sub_ok = [[ok[i][j] for j in rest_p] for i in rest_g]
            sub_d = [[dist[i][j] for j in rest_p] for i in rest_g]
            for a, b in _best_assignment(sub_ok, sub_d, len(rest_g), len(rest_p)):
                i, j = rest_g[a], rest_p[b]
                o, h = gts[i][0], prs[j][0]
                if o in last and last[o] != h:
                    switches += 1
                else:
                    matches += 1
                last[o] = h
                used_g.add(i), used_p.add(j)
            fn += len(gts) - len(used_g)
            fp += len(prs) - len(used_p)
        objs = sorted({o for o, _ in co})
        hyps = sorted({h for _, h in co})
        best = 0
        for k in range(min(len(objs), len(hyps)) + 1):
            for osub in itertools.combinations(objs, k):
                for hsub in itertools.permutations(hyps, k):
                    best = max(best, sum(co.get((o, h), 0) for o, h in zip(osub, hsub)))
        idtp += best
    return {"tp": matches, "ids": switches, "fp": fp, "fn": fn,
            "mota": max(0.0, 1 - (fn + switches + fp) / n_gt), "idf1": 2 * idtp / (n_gt + n_pred)}


@pytest.mark.parametrize("seed", range(10))
def test_association_matches_brute_force(seed):
    rng = random.Random(100 + seed)
    gt, preds, frames, raw = {}, {}, {}, []
    for s in range(2):
        scene = f"sc{s}"
        frames[scene] = []
        positions = {o: (rng.uniform(-4, 4), rng.uniform(-4, 4)) for o in range(3)}
        scene_raw = []
        for f in range(6):
            token = f"{scene}/{f}"
            frames[scene].append(token)
            gts = []
            for o, (x, y) in positions.items():
                if rng.random() < 0.8:
                    gts.append((o, x + 0.5 * f, y))
            prs = []
            for o, x, y in gts:
                if rng.random() < 0.8:
                    tid = rng.choice([o, o, o, o + 10, (o + 1) % 3])  # mostly right, sometimes swapped
                    if tid not in [p[0] for p in prs]:
                        prs.append((tid, x + rng.uniform(-1.6, 1.6), y + rng.uniform(-1.6, 1.6)))
            if rng.random() < 0.5:
                tid = rng.choice([50, 51])
                if tid not in [p[0] for p in prs]:
                    prs.append((tid, rng.uniform(-4, 7), rng.uniform(-4, 4)))
            gt[token] = gt_from_boxes(np.array([box(x, y) for _, x, y in gts]).reshape(-1, 10), ["car"] * len(gts),
                                      [o for o, _, _ in gts])
            preds[token] = [det(x, y, tid, score=0.5) for tid, x, y in prs]
            scene_raw.append((gts, prs))
        raw.append(scene_raw)
    m = evaluate_tracking(gt, preds, frames, ["car"], score_threshold=0.0)
    expected = _brute_clear_mot(raw)
    got = m.class_metrics["car"]
    for key in ("tp", "ids", "fp", "fn"):
        assert got[key] == expected[key], key
    assert got["mota"] == pytest.approx(expected["mota"])
    assert got["idf1"] == pytest.approx(expected["idf1"])


# ---------------------------------------------------------------------------------------------
# Long sequences: what the engine's failure mode (a new id every frame) scores, against stable ids.
# ---------------------------------------------------------------------------------------------

def _walkers(num_frames=12, num_objects=3):
    """num_objects cars 4 m apart walking +0.3 m per frame, annotated in every frame of scene 'w'."""
    gt, frames = {}, {"w": []}
    for f in range(num_frames):
        token = f"w/{f}"
        frames["w"].append(token)
        gt[token] = gt_from_boxes([box(0.3 * f, 4.0 * o) for o in range(num_objects)], ["car"] * num_objects,
                                  list(range(num_objects)))
    return gt, frames


def _predict(gt, frames, track_id, score=lambda o: 0.5 + 0.1 * o):
    """Predictions on every annotation; track_id(frame, object) names the predicted track."""
    preds = {}
    for f, token in enumerate(frames["w"]):
        preds[token] = [det(b["translation"][0], b["translation"][1], track_id(f, b["instance_id"]),
                            score=score(b["instance_id"])) for b in gt[token]]
    return preds


def test_long_perfect_tracks_score_1():
    gt, frames = _walkers(num_frames=24)
    m = evaluate_tracking(gt, _predict(gt, frames, lambda f, o: f"t{o}"), frames, ["car"])
    assert m.amota == pytest.approx(1.0) and m.mota == pytest.approx(1.0) and m.idf1 == pytest.approx(1.0)
    assert m.amotp == pytest.approx(0.0) and m.ids == 0 and m.tp == 72


def test_new_id_every_frame_scores_amota_0_despite_perfect_boxes():
    # Every match after the first frame is an identity switch: matches (recall) stop at 1/12 < 0.1, so
    # no recall point of AMOTA is reached. IDF1: each 1-frame hypothesis pairs with one object: 2*3/72.
    # Without a reached recall point the devkit reports its worst values; a fixed threshold gives the counts.
    gt, frames = _walkers(num_frames=12)
    preds = _predict(gt, frames, lambda f, o: f"{f}-{o}")
    m = evaluate_tracking(gt, preds, frames, ["car"])
    assert m.amota == 0.0 and m.amotp == pytest.approx(2.0) and m.mota == 0.0 and m.fn == 36
    fixed = evaluate_tracking(gt, preds, frames, ["car"], score_threshold=0.0)
    assert fixed.tp == 3 and fixed.ids == 33 and fixed.fp == 0 and fixed.fn == 0
    assert fixed.idf1 == pytest.approx(2 * 3 / 72)
    assert fixed.mota == pytest.approx(1 - 33 / 36)
    assert fixed.amota == 0.0
    # Stable ids on the same boxes: everything perfect.
    assert evaluate_tracking(gt, _predict(gt, frames, lambda f, o: o), frames, ["car"]).amota == pytest.approx(1.0)


def test_one_switch_halfway_lowers_idf1_and_the_reachable_recall():
    # Object 0 changes id after frame 5 of 12 (one switch); objects 1, 2 keep theirs. One score for all.
    # Matches 35 of 36: recall points 0.1 + k*0.9/39 <= 35/36 are reached (k <= 37: 38 points), each
    # with MOTAR 1 (the switch is exactly the unmatched share). IDF1 = 2*(6 + 12 + 12)/72.
    gt, frames = _walkers(num_frames=12)
    track = lambda f, o: f"t{o}" if o or f < 6 else "t0-new"  # noqa: E731
    m = evaluate_tracking(gt, _predict(gt, frames, track, score=lambda o: 0.7), frames, ["car"])
    assert m.ids == 1 and m.tp == 35
    assert m.mota == pytest.approx(1 - 1 / 36)
    assert m.idf1 == pytest.approx(2 * 30 / 72)
    assert m.amota == pytest.approx(38 / 40)
