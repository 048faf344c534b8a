"""Training pipeline: loss, samples, pools, config, transfer, a tiny real run, export and registration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

import xs2mask
from xs2mask.exceptions import InputError
from xs2mask.models import registry
from xs2mask.training import data as tdata
from xs2mask.training.pseudo import PseudoLabels
from xs2mask.training.sources import Scene
from xs2mask.training.train import Stage, TrainConfig, build_model, train, transfer

BANDS = ("B02", "B03", "B04", "B08")


def test_partial_ce_accepts_either_cloud_class_for_code_4():
    logits = torch.tensor([[5.0, 0.0, 0.0, -5.0], [0.0, 5.0, -5.0, 0.0], [0.0, -5.0, 5.0, 0.0]]).T
    logits = logits.reshape(1, 4, 1, 3)
    weight = torch.ones(1, 1, 3)
    # Thick and thin cloud are both right for "cloud, thick or thin".
    cloud_any = tdata.partial_ce(logits[..., 1:], torch.tensor([[[4, 4]]]), weight[..., 1:])
    exact = tdata.partial_ce(logits[..., 1:], torch.tensor([[[1, 2]]]), weight[..., 1:])
    assert float(cloud_any) < float(exact) + 1e-6
    assert float(cloud_any) < 0.02
    # Ignored pixels and zero weights do not count.
    ignored = tdata.partial_ce(logits, torch.tensor([[[0, 255, 255]]]), weight)
    assert float(ignored) == pytest.approx(
        float(tdata.partial_ce(logits[..., :1], torch.tensor([[[0]]]), weight[..., :1]))
    )


def _scene(name, value, split="train", size=48):
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    refl = (value + 0.02 * rng.standard_normal((4, size, size))).astype(np.float32)
    return Scene(name, refl, BANDS, "L2A", split)


def _pools():
    clear = [_scene(f"c{i}", 0.1) for i in range(3)]
    cloudy = _scene("cloudy", 0.5)
    target = np.full((48, 48), 4, np.uint8)
    target[:, :10] = 0
    pl = PseudoLabels("cloudy", "teacher", target, np.full((48, 48), 0.9, np.float32))
    return tdata.Pools(tuple(clear), ((cloudy, pl),), (clear[0],))


def test_samples_are_a_deterministic_function_of_seed_epoch_index():
    maker = tdata.SampleMaker(_pools(), BANDS, np.full(4, 0.2), np.full(4, 0.1), patch=64,
                              simulated_fraction=0.5, seed=3)  # fmt: skip
    a, b = maker(1, 7), maker(1, 7)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    x, target, weight = a
    assert x.shape == (4, 64, 64) and x.dtype == np.float32 and not np.isnan(x).any()
    assert target.shape == weight.shape == (64, 64)
    assert set(np.unique(target)) <= {0, 1, 2, 3, 4, 255}
    assert not np.array_equal(maker(1, 8)[0], x)


def test_drawn_targets_follow_the_teacher_and_their_loss_is_the_soft_loss():
    from xs2mask.training.pseudo import draw_targets

    prob = np.zeros((3, 64, 64), np.float32)
    prob[:, :, :32] = np.array([0.2, 0.5, 0.3])[:, None, None]  # codes 0 clear, 4 cloud, 3 shadow
    prob[:, :, 32:] = np.array([1.0, 0.0, 0.0])[:, None, None]
    prob[:, :4, :4] = 0.0  # no data
    codes = (0, 4, 3)
    target = draw_targets(prob, codes, np.random.default_rng(1))
    assert (target[:4, :4] == 255).all()
    assert (target[:, 32:][4:] == 0).all()
    hazy = target[4:, :32]
    np.testing.assert_allclose([(hazy == c).mean() for c in codes], [0.2, 0.5, 0.3], atol=0.03)
    # Averaged over draws, the loss is the cross-entropy against the soft labels.
    logits = torch.tensor([0.3, 1.0, -0.5, 0.2]).reshape(1, 4, 1, 1).expand(1, 4, 60, 32)
    drawn = np.mean(
        [
            float(tdata.partial_ce(logits, torch.from_numpy(draw_targets(prob[:, 4:, :32], codes, rng))[None],
                                   torch.ones(1, 60, 32)))
            for rng in map(np.random.default_rng, range(20))
        ]
    )  # fmt: skip
    p = torch.softmax(logits[0, :, 0, 0], 0)
    soft = -(0.2 * p[0].log() + 0.5 * (p[1] + p[2]).log() + 0.3 * p[3].log())
    assert drawn == pytest.approx(float(soft), rel=0.02)


def test_sampled_teacher_targets_are_deterministic_and_need_probabilities():
    pools = _pools()
    cloudy, pl = pools.cloudy[0]
    prob = np.zeros((3, 48, 48), np.float16)
    prob[0], prob[1] = 0.4, 0.6
    soft = PseudoLabels(pl.scene, pl.teacher, pl.target, pl.confidence, prob, (0, 4, 3))
    maker = tdata.SampleMaker(tdata.Pools(pools.clear, ((cloudy, soft),), pools.clear_validation), BANDS,
                              np.full(4, 0.2), np.full(4, 0.1), patch=64, simulated_fraction=0.0, seed=3,
                              teacher_targets="sampled")  # fmt: skip
    _, target, weight = maker(0, 1)
    np.testing.assert_array_equal(target, maker(0, 1)[1])
    assert set(np.unique(target)) == {0, 4}  # drawn, not the hard targets' fixed clear stripe
    assert 0.5 < (target == 4).mean() < 0.7 and (weight == 1).all()
    hard_only = tdata.SampleMaker(pools, BANDS, np.full(4, 0.2), np.full(4, 0.1), patch=64,
                                  simulated_fraction=0.0, seed=3, teacher_targets="sampled")  # fmt: skip
    with pytest.raises(ValueError, match="needs the teacher's probabilities"):
        hard_only(0, 1)
    with pytest.raises(ValueError, match="teacher_targets must be"):
        tdata.SampleMaker(pools, BANDS, np.zeros(4), np.ones(4), patch=64, simulated_fraction=0.0, seed=3,
                          teacher_targets="soft")  # fmt: skip


def test_illumination_scales_every_band_of_a_sample_alike():
    plain = tdata.Augment(gain=0.0, offset=0.0, noise=0.0)
    lit = tdata.Augment(gain=0.0, offset=0.0, noise=0.0, illumination=0.3)
    mean, std = np.full(4, 0.2), np.full(4, 0.1)
    kw = dict(patch=64, simulated_fraction=0.5, seed=3)
    makers = [tdata.SampleMaker(_pools(), BANDS, mean, std, augment=a, **kw) for a in (plain, lit)]
    factors = []
    for index in range(6):
        (x0, t0, w0), (x1, t1, w1) = (m(0, index) for m in makers)
        np.testing.assert_array_equal(t0, t1)  # the same sample, crop and geometry: drawn last
        np.testing.assert_array_equal(w0, w1)
        ratio = (x1 * std[:, None, None] + mean[:, None, None]) / (
            x0 * std[:, None, None] + mean[:, None, None]
        )
        np.testing.assert_allclose(ratio, ratio.flat[0], rtol=1e-4)  # one factor for every band and pixel
        factors.append(ratio.flat[0])
    assert all(0.7 <= f <= 1.3 for f in factors) and np.ptp(factors) > 0.1
    with pytest.raises(ValueError, match=r"Augment\.illumination must lie in"):
        tdata.Augment(illumination=1.0)


def test_class_weights_apply_to_simulated_and_teacher_targets_separately():
    weights = (1.0, 1.0, 1.5, 2.0, 3.0)
    kw = dict(patch=64, seed=3, class_weights=weights)
    pools, mean, std = _pools(), np.full(4, 0.2), np.full(4, 0.1)
    simulated = tdata.SampleMaker(pools, BANDS, mean, std, simulated_fraction=1.0, **kw)
    teacher = tdata.SampleMaker(pools, BANDS, mean, std, simulated_fraction=0.0, **kw)
    unweighted = tdata.SampleMaker(pools, BANDS, mean, std, simulated_fraction=0.0,
                                   teacher_class_weights=(1.0,) * 5, **kw)  # fmt: skip
    for maker, table in ((simulated, weights), (teacher, weights), (unweighted, (1.0,) * 5)):
        for index in range(4):
            _, target, weight = maker(0, index)
            # the teacher's confidence here is 0.9 everywhere; simulated pixels weigh 1
            base = 0.9 if maker is not simulated else 1.0
            for code in np.unique(target[target != 255]):
                np.testing.assert_allclose(weight[target == code], base * table[code], rtol=1e-6)
    with pytest.raises(ValueError, match="class weights must be 5 non-negative numbers"):
        tdata.SampleMaker(pools, BANDS, mean, std, simulated_fraction=0.0, patch=64, seed=3,
                          class_weights=(1.0, 2.0))  # fmt: skip


def test_pools_split_by_teacher_cloud_fraction_and_hold_out_validation():
    scenes = [_scene(f"s{i}", 0.1) for i in range(40)] + [_scene("v", 0.1, split="validation")]
    labels = []
    for i, s in enumerate(scenes):
        t = np.zeros((48, 48), np.uint8)
        if i % 4 == 0:
            t[:20] = 4
        labels.append(PseudoLabels(s.name, "t", t, np.ones((48, 48), np.float32)))
    pools = tdata.make_pools(scenes, labels)
    assert len(pools.cloudy) == 10
    assert all(s.split == "train" for s in pools.clear + pools.clear_validation)
    assert {s.name for s in pools.clear}.isdisjoint({s.name for s in pools.clear_validation})
    assert len(pools.clear_validation) > 0
    # Fixed by the names: the same split every run.
    again = tdata.make_pools(scenes, labels)
    assert [s.name for s in again.clear_validation] == [s.name for s in pools.clear_validation]


def test_config_errors_name_the_unknown_keys(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('name = "x"\nbands = ["B02"]\nwrong = 1\n[[stages]]\nname = "a"\n')
    with pytest.raises(InputError, match="unknown keys \\['wrong'\\]"):
        TrainConfig.from_toml(path)
    path.write_text('name = "x"\nbands = ["B02"]\n')
    with pytest.raises(InputError, match="no \\[\\[stages\\]\\]"):
        TrainConfig.from_toml(path)
    # [clouds] overrides the simulator's CloudConfig; its keys and ranges are checked on reading
    stage = '[[stages]]\nname = "a"\n'
    path.write_text(f'name = "x"\nbands = ["B02"]\n[clouds]\nthin_coverage = [0.05, 1.0]\n{stage}')
    assert TrainConfig.from_toml(path).clouds == (("thin_coverage", (0.05, 1.0)),)
    # teachers: registered models with ukis-csmask's classes, so that their probabilities average
    teachers = 'teachers = ["ukis-csmask-4b-l2a", "ukis-csmask-4b-l1c"]'
    path.write_text(f'name = "x"\nbands = ["B02"]\n{teachers}\n{stage}')
    assert TrainConfig.from_toml(path).teachers == ("ukis-csmask-4b-l2a", "ukis-csmask-4b-l1c")
    # [augment] overrides data.Augment
    path.write_text(
        f'name = "x"\nbands = ["B02"]\n[augment]\nillumination = 0.2\nscale = [1.0, 1.0]\n{stage}'
    )
    assert TrainConfig.from_toml(path).augment == (("illumination", 0.2), ("scale", (1.0, 1.0)))
    for body, error in [
        ("[clouds]\nthin_cover = [0.05, 1.0]", "\\[clouds\\]: unknown keys \\['thin_cover'\\]"),
        ("[clouds]\np_thick = 1.5", "p_thick must lie in"),
        ('teachers = ["ukis-4b"]', "teacher 'ukis-4b' is not a registered model"),
        ('teachers = ["s2cloudless"]', "an ensemble of teachers needs"),
        ("ema_decay = 1.0", "ema_decay must lie in"),
        ("[augment]\nilumination = 0.2", "\\[augment\\]: unknown keys \\['ilumination'\\]"),
        ("[augment]\nillumination = 1.5", "Augment.illumination must lie in"),
    ]:
        path.write_text(f'name = "x"\nbands = ["B02"]\n{body}\n{stage}')
        with pytest.raises(InputError, match=error):
            TrainConfig.from_toml(path)
    # a config built in Python is checked as early, on construction
    for kwargs, error in [
        ({"stages": ()}, "no \\[\\[stages\\]\\]"),
        ({"class_weights": (1.0, 2.0)}, "class weights must be 5 non-negative numbers"),
        ({"teacher_targets": "soft"}, "teacher_targets must be 'confident' or 'sampled'"),
        ({"scene_sampling": "by-area"}, "scene_sampling must be 'area' or 'uniform'"),
        ({"clouds": (("p_thin", 2.0),)}, "\\[clouds\\]: CloudConfig.p_thin must lie in"),
        ({"ema_decay": -0.1}, "ema_decay must lie in"),
    ]:
        with pytest.raises(InputError, match=error):
            TrainConfig(**{"name": "x", "bands": BANDS, "stages": (Stage("a"),), **kwargs})
    repo_config = TrainConfig.from_toml(Path(__file__).parents[1] / "configs" / "xs2mask-4b.toml")
    assert [s.patch for s in repo_config.stages] == sorted(s.patch for s in repo_config.stages)


def test_transfer_maps_the_first_convolution_by_band_name():
    big = TrainConfig("big", ("B02", "B03", "B04", "B08", "B11", "B12"), (Stage("s"),))
    small = TrainConfig("small", BANDS, (Stage("s"),))
    src, dst = build_model(big), build_model(small)
    skipped = transfer(dst, src.state_dict(), big.bands, small.bands)
    assert skipped == []
    first = next(k for k, v in src.state_dict().items() if v.ndim == 4 and v.shape[1] == 6)
    np.testing.assert_array_equal(dst.state_dict()[first].numpy(), src.state_dict()[first][:, :4].numpy())


def test_tiny_run_trains_exports_and_registers(tmp_path, real_data):
    config = TrainConfig(
        name="tiny-4b",
        bands=BANDS,
        stages=(
            Stage("p64", patch=64, epochs=1, samples_per_epoch=16, batch_size=8),
            Stage(
                "hard", patch=64, epochs=1, samples_per_epoch=8, batch_size=8, hard_examples=4, hard_pool=8
            ),
        ),
        data=str(real_data),
        sources=("eolearn", "sen12ms"),
        out=str(tmp_path / "runs"),
        cache=str(tmp_path / "cache"),
        validation_samples=2,
        ema_decay=0.5,  # validated, checkpointed and exported: the average
    )
    lines = []
    run = train(config, log=lines.append)
    assert any(line.startswith("data:") for line in lines)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["stage"] for m in metrics] == ["p64", "hard"]
    assert all(np.isfinite(m["loss"]) for m in metrics)
    specs = {s.name: s for s in registry.shipped(run)}
    assert set(specs) == {"tiny-4b", "tiny-4b-torch"}
    # the spec carries the tiling the config asked for, and a model without B10 runs on both levels
    assert (specs["tiny-4b"].patch_size, specs["tiny-4b"].overlap) == (544, 32)
    assert specs["tiny-4b"].levels == ("L1C", "L2A")
    cube = xr.DataArray(
        xs2mask.data.demo_scene().values[:, :128, :128], dims=("band", "y", "x"), coords={"band": list(BANDS)}
    )
    onnx = xs2mask.predict(cube, model=specs["tiny-4b"], output="probability", probability_dtype="float16")
    torch_ = xs2mask.predict(
        cube, model=specs["tiny-4b-torch"], output="probability", probability_dtype="float16"
    )
    np.testing.assert_allclose(onnx.probability.values, torch_.probability.values, atol=2e-3)


def test_s2cloudless_co_teaches_the_cloud_class_on_l1c_scenes():
    from xs2mask.training.pseudo import S2CLOUDLESS_BANDS, _with_cloud_probability, teachers_for

    all13 = (*S2CLOUDLESS_BANDS, "B03", "B06", "B07")
    l1c = Scene("a", np.zeros((13, 2, 2), np.float32), all13, "L1C", "train")
    l2a = Scene("b", np.zeros((4, 2, 2), np.float32), BANDS, "L2A", "train")
    assert teachers_for(l1c) == ("ukis-csmask-4b-l1c", "s2cloudless")
    assert teachers_for(l2a) == ("ukis-csmask-4b-l2a",)
    both = ("ukis-csmask-4b-l2a", "ukis-csmask-4b-l1c")
    assert teachers_for(l1c, both) == (*both, "s2cloudless")
    # classes 0 clear, 1 cloud, 3 shadow; a pixel where the teachers agree and one where they disagree
    ukis = np.array([[0.1, 0.6], [0.8, 0.1], [0.1, 0.3]], np.float32)[:, :, None]
    mixed = _with_cloud_probability(ukis, (0, 1, 3), np.array([[0.8], [0.5]], np.float32))
    np.testing.assert_allclose(mixed.sum(axis=0), 1.0, rtol=1e-6)
    np.testing.assert_allclose(mixed[1, :, 0], [0.8, 0.3], rtol=1e-6)
    # clear : shadow keeps ukis' ratio
    np.testing.assert_allclose(mixed[0] / mixed[2], ukis[0] / ukis[2], rtol=1e-5)


def test_an_ensemble_of_teachers_averages_their_probabilities():
    import xs2mask
    from xs2mask.training.pseudo import pseudo_label

    demo = xs2mask.data.demo_scene().isel(y=slice(0, 96), x=slice(0, 96)).load()
    refl = demo.sel(band=list(BANDS)).values.astype(np.float32) / 10_000  # DN, no offset
    scene = Scene("demo", refl, BANDS, "L2A", "train")
    both = ("ukis-csmask-4b-l2a", "ukis-csmask-4b-l1c")
    alone = [pseudo_label(scene, min_confidence=0.5, teachers=(t,)).probability for t in both]
    mixed = pseudo_label(scene, min_confidence=0.5, teachers=both)
    assert mixed.teacher == "ukis-csmask-4b-l2a+ukis-csmask-4b-l1c"
    expected = (alone[0].astype(np.float32) + alone[1].astype(np.float32)) / 2
    np.testing.assert_allclose(mixed.probability.astype(np.float32), expected, atol=2e-3)


def test_coarse_samples_are_area_averaged_and_keep_the_patch_size():
    coarse = tdata.Augment(gain=0.0, offset=0.0, noise=0.0, coarsen=(3.0, 3.0), coarsen_probability=1.0)
    pools = _pools()
    big = _scene("big", 0.1, size=400)
    prob = np.zeros((3, 400, 400), np.float16)
    prob[0, :, :200], prob[1, :, 200:] = 1.0, 1.0  # clear west, cloud east
    pl = PseudoLabels("big", "t", np.where(prob[1] > 0, 4, 0).astype(np.uint8), np.ones((400, 400)), prob,
                      (0, 4, 3))  # fmt: skip
    pools = tdata.Pools(pools.clear, ((big, pl),), pools.clear_validation)
    kw = dict(patch=64, seed=3, augment=coarse, teacher_targets="sampled")
    teacher = tdata.SampleMaker(pools, BANDS, np.zeros(4), np.ones(4), simulated_fraction=0.0, **kw)
    x, target, _ = teacher(0, 2)
    assert x.shape == (4, 64, 64) and target.shape == (64, 64)
    # 3 x 3 averages of noise of sd 0.02: sd 0.0067 (the scale jitter's nearest resize keeps values)
    assert 0.004 < float(x.std(axis=(1, 2)).mean()) < 0.01
    simulated = tdata.SampleMaker(pools, BANDS, np.zeros(4), np.ones(4), simulated_fraction=1.0, **kw)
    x, target, _ = simulated(0, 2)
    assert x.shape == (4, 64, 64) and set(np.unique(target)) <= {0, 1, 2, 3}
    # A 48 px cloudy scene is never mirrored to reach a coarse window: its factor shrinks to 1.
    small = tdata.SampleMaker(_pools(), BANDS, np.zeros(4), np.ones(4), simulated_fraction=0.0, patch=64,
                              seed=3, augment=coarse)  # fmt: skip
    assert 0.015 < float(small(0, 2)[0].std(axis=(1, 2)).mean()) < 0.03
    with pytest.raises(ValueError, match="coarsen"):
        tdata.Augment(coarsen=(0.5, 2.0))


def test_human_labels_override_the_teachers_cloud_and_keep_its_shadow():
    from xs2mask.training.pseudo import with_human_labels

    prob = np.zeros((3, 2, 3), np.float16)
    prob[:, 0] = np.array([[0.1, 0.8, 0.1], [0.9, 0.0, 0.1], [0.5, 0.0, 0.5]]).T  # codes 0, 4, 3
    prob[:, 1, :2] = np.array([[0.0, 1.0, 0.0], [0.2, 0.2, 0.6]]).T  # pixel (1, 2): no data
    pl = PseudoLabels("s", "t", np.zeros((2, 3), np.uint8), np.ones((2, 3)), prob, (0, 4, 3))
    human = np.array([[0, 1, 0], [0, 1, 1]], np.uint8)
    out = with_human_labels(pl, human)
    assert out.target.tolist() == [[0, 4, 0], [0, 4, 255]]
    p = out.probability.astype(np.float32)
    # the teacher's cloud dropped, the rest rescaled
    np.testing.assert_allclose(p[:, 0, 0], [0.5, 0.0, 0.5], atol=1e-3)
    np.testing.assert_allclose(p[:, 1, 0], [1.0, 0.0, 0.0])  # all cloud for the teacher, none for the person
    np.testing.assert_allclose(p[:, 1, 1], [0.0, 1.0, 0.0])
    assert (p[:, 1, 2] == 0).all()


def test_eroded_human_labels_leave_the_outlines_ring_to_the_teacher():
    from xs2mask.training.pseudo import with_human_labels

    # a person's cloud of 7 x 7 px drawn generously; the teacher calls its outer ring clear (0.9)
    prob = np.zeros((3, 9, 9), np.float16)
    prob[0], prob[1] = 0.9, 0.1
    prob[:, 2:7, 2:7] = np.array([0.05, 0.9, 0.05], np.float16)[:, None, None]
    pl = PseudoLabels("s", "t", np.zeros((9, 9), np.uint8), np.ones((9, 9)), prob, (0, 4, 3))
    human = np.zeros((9, 9), np.uint8)
    human[1:8, 1:8] = 1
    as_drawn = with_human_labels(pl, human)
    eroded = with_human_labels(pl, human, erode=2)
    assert (as_drawn.target == 4).sum() == 49
    # 2 px off the outline: the inner 3 x 3 stays the person's cloud (probability 1) ...
    p = eroded.probability.astype(np.float32)
    assert (eroded.target[3:6, 3:6] == 4).all() and (p[1, 3:6, 3:6] == 1).all()
    # ... the ring keeps the teacher's targets: clear on its outer pixels, cloud on its inner ones
    ring = (human == 1) & ~np.pad(np.ones((3, 3), bool), 3)
    np.testing.assert_allclose(p[:, ring], prob.astype(np.float32)[:, ring], atol=1e-3)
    assert (eroded.target[1][1:8] == 0).all() and eroded.target[2, 2] == 4
    # outside the drawing nothing changes
    np.testing.assert_array_equal(eroded.target[human == 0], as_drawn.target[human == 0])
