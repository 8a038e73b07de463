"""Scale model: fitting recovers known parameters; predictions move the way physics says."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from shoal.model import fit as mfit
from shoal.model import predict as mpred
from shoal.model import store
from shoal.model.site import load_site
from shoal.model.terms import Fabric, Observation, Params, predict_time, shared_floor

REPO = Path(__file__).resolve().parents[2]
MB = 1e6
EMU = Fabric(link_bps=125 * MB, storage_bps=250 * MB)  # eth10g at 1/10, 2 Gbit/s storage


def _obs(method: str, n: int, fabric: Fabric = EMU, *, cpu: dict[str, float] | None = None,
         network: str = "eth10g") -> Observation:
    return Observation(method=method, workload="catwalk", nodes=n, fabric=fabric,
                       image_bytes=70 * MB, read_bytes=70 * MB, files_read=3000,
                       local_bytes=200 * MB,
                       cpu=cpu if cpu is not None else {"stage": 0.8, "workload": 0.5},
                       network=network)


def _synth(method: str, truth: Params, nodes: list[int], noise: float, seed: int,
           fabrics: dict[str, Fabric] | None = None) -> list[Observation]:
    rng = np.random.default_rng(seed)
    out = []
    for net, fab in (fabrics or {"eth10g": EMU}).items():
        for n in nodes:
            for _ in range(5):
                o = _obs(method, n, fab, network=net)
                t = predict_time(truth, o) * float(np.exp(rng.normal(0, noise)))
                out.append(replace(o, seconds=t))
    return out


@pytest.mark.parametrize("method", ["untar", "sbcast", "squashfs-kernel", "bcast"])
def test_fit_recovers_known_parameters(method: str) -> None:
    truth = Params(eta=1.6, l0=0.7, l1=0.15)
    obs = _synth(method, truth, [1, 2, 4, 8, 16, 32], noise=0.0, seed=1)
    (g,) = mfit.fit(obs, bootstrap=0)
    assert g.shared_identified
    assert g.params.eta == pytest.approx(truth.eta, rel=1e-3)
    assert g.params.l0 == pytest.approx(truth.l0, abs=1e-3)
    assert g.params.l1 == pytest.approx(truth.l1, abs=1e-3)


def test_fit_with_noise_stays_close_and_band_covers_truth() -> None:
    truth = Params(eta=2.0, l0=1.0, l1=0.2)
    obs = _synth("untar", truth, [1, 2, 4, 8, 16], noise=0.05, seed=2)
    (g,) = mfit.fit(obs, bootstrap=100)
    assert g.params.eta == pytest.approx(truth.eta, rel=0.15)
    at = replace(g.template, nodes=32)
    p = mfit.predict(g, at, cores_per_node=None)
    true_t = predict_time(truth, at)
    assert p.low <= p.seconds <= p.high
    assert p.low * 0.9 <= true_t <= p.high * 1.1


def test_emulator_contention_is_fitted_but_not_predicted() -> None:
    # a CPU-bound method: 4 CPU seconds per node, nothing shared after the copy
    o = replace(_obs("sbcast-squashfs", 16), cpu={"workload": 4.0})
    emu = predict_time(Params(1, 0, 0), o)
    site = predict_time(Params(1, 0, 0), o, cores_per_node=16)
    assert emu >= 16 * 4.0 / 2  # 16 nodes' CPU work on 2 host cores
    assert site < 4.0 + shared_floor("sbcast-squashfs", "collective", o) + 1e-9


def test_launch_only_group_pins_eta() -> None:
    obs = [replace(_obs("sbcast-squashfs", n, cpu={"workload": 0.1}), seconds=0.5 + 0.1 * n)
           for n in (1, 2, 4)]
    obs = [replace(o, method="local-only") for o in obs]
    (g,) = mfit.fit(obs, bootstrap=0)
    assert not g.shared_identified and g.params.eta == 1.0


@pytest.mark.parametrize("method", ["untar", "sbcast", "squashfs-kernel", "squashfuse",
                                    "shared-dir", "bcast", "registry", "sbcast-squashfs"])
def test_predictions_monotone_where_physics_says(method: str) -> None:
    p = Params(eta=1.3, l0=0.5, l1=0.1)
    base = _obs(method, 1)
    times = [predict_time(p, replace(base, nodes=n), cores_per_node=16) for n in
             (1, 2, 4, 8, 16, 128, 512, 2048)]
    assert times == sorted(times), "more nodes never make a run faster"
    slow = replace(base, nodes=64, fabric=replace(EMU, link_bps=EMU.link_bps / 10))
    fast = replace(base, nodes=64)
    assert predict_time(p, slow, cores_per_node=16) >= predict_time(p, fast, cores_per_node=16)
    less_storage = replace(base, nodes=64, fabric=replace(EMU, storage_bps=EMU.storage_bps / 10))
    assert predict_time(p, less_storage, cores_per_node=16) >= \
        predict_time(p, fast, cores_per_node=16)


def test_physical_floors() -> None:
    s, b = 70 * MB, EMU.link_bps
    # N copies through one storage server
    assert shared_floor("untar", "stage", _obs("untar", 16)) == pytest.approx(16 * s / 250e6)
    # a pipelined chain: one copy's time plus a chunk per hop
    chain = shared_floor("bcast", "stage", _obs("bcast", 32))
    assert chain == pytest.approx(s / 250e6 + s / b + 31 * EMU.chunk_bytes / b)
    # sbcast's non-pipelined tree: k copies per level
    assert shared_floor("sbcast", "collective", _obs("sbcast", 64)) == pytest.approx(
        s / 250e6 + 2 * 8 * s / b)


def test_crossover_and_sensitivity_on_shipped_site(tmp_path: Path) -> None:
    truth = Params(eta=1.2, l0=0.5, l1=0.1)
    obs = (_synth("untar", truth, [1, 2, 4, 8], 0.0, 3)
           + _synth("bcast", Params(1.2, 1.0, 0.1), [1, 2, 4, 8], 0.0, 4))
    groups = mfit.fit(obs, bootstrap=0)
    site = load_site(REPO / "examples" / "sites" / "eth10g-192.toml")
    cross = mpred.crossovers(groups, site, 192)
    assert [(c.loser, c.winner) for c in cross] == [("untar", "bcast")]
    grid = mpred.node_grid(192)
    n = cross[0].nodes
    below = grid[grid.index(n) - 1]
    win = mpred.winners(mpred.at_site(groups, site, [below, n]))
    assert win[("catwalk", below)].method == "untar" and win[("catwalk", n)].method == "bcast"
    sens = mpred.sensitivity(groups, site, [1, 192])
    assert set(sens) == set(site.assumed) and "storage_gbyte" in sens
    # with more storage bandwidth untar wins at more node counts
    lo, hi = sens["storage_gbyte"][0][1], sens["storage_gbyte"][-1][1]
    assert sum(m == "untar" for m in hi.values()) >= sum(m == "untar" for m in lo.values())
    path = tmp_path / "model.json"
    store.save(groups, path, source="synthetic")
    again = store.load(path)
    assert [g.params for g in again] == [g.params for g in groups]
    assert math.isinf(again[0].template.fabric.metadata_ops)


def test_validation_on_synthetic_data() -> None:
    truth = Params(eta=1.5, l0=0.6, l1=0.1)
    fabrics = {"eth10g": EMU, "eth1g": replace(EMU, link_bps=12.5 * MB)}
    obs = _synth("untar", truth, [1, 2, 4, 8, 16], 0.02, 5, fabrics)
    errs = mfit.leave_largest_n_out(obs)
    assert np.median(errs[("untar", "catwalk")]) < 0.1
    net = mfit.leave_one_network_out(obs)
    assert set(net) == {"eth10g", "eth1g"}
    assert np.median(net["eth1g"][("untar", "catwalk")]) < 0.1


@pytest.mark.parametrize("text,needle", [
    ("", "needs a [site] table"),
    ("[site]\nname='x'\nnodes=0\ncores_per_node=1\nlink_gbit=1\nstorage_gbyte=1", "positive"),
    ("[site]\nname='x'\nnodes=4\ncores_per_node=1\nlink_gbit=1", "missing site.storage_gbyte"),
    ("[site]\nbogus=1", "unknown key"),
    ("[site\n", "not valid TOML"),
])
def test_site_errors(tmp_path: Path, text: str, needle: str) -> None:
    p = tmp_path / "s.toml"
    p.write_text(text)
    with pytest.raises(mfit.ModelError) as ei:
        load_site(p)
    assert needle in str(ei.value)
