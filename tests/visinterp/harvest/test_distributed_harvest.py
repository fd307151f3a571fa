"""Harvests under torchrun (2 gloo ranks on the CPU): each rank harvests its own run of batches
and the stores are merged into the store one process writes: the same windows in the same order,
the same item indices, grid and identity, and no rank folders left behind. Image maps through
TAEF2's real weights; token windows through a stand-in LM whose planted outliers test that the
ranks leave out the same windows as one process (the outlier rule compares with each batch's
median)."""

import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from ctxsae_core.store import ActivationStore, rank_items

TAEF2 = Path(__file__).resolve().parents[3].parent / "shared" / "weights" / "taef2"

WORKER = textwrap.dedent('''
    import sys
    from pathlib import Path
    import torch
    from ctxsae_core.distributed import init_from_env, shutdown

    kind, out = sys.argv[1], Path(sys.argv[2])
    init_from_env("cpu")
    if kind == "maps":
        from visinterp.harvest.maps import harvest
        from visinterp.models.autoencoders import load_autoencoder

        ae = load_autoencoder(sys.argv[3])
        images = torch.rand(9, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        harvest(ae, lambda a, b: images[a:b], 9, ["latent", "encoder.down.2"], out, {"images": "rand"}, tile=4,
                batch_images=2, shard_windows=3, progress=False)
    else:
        from visinterp.harvest.tokens import harvest_tokens

        class StandIn:  # capture: a fixed embedding of each token, with one token 50x the rest
            description = "stand-in"

            def capture(self, rows, hooks):
                emb = torch.randn(50, 6, generator=torch.Generator().manual_seed(1))
                emb[7] *= 50
                return {hooks[0]: emb[rows]}

        ids = torch.randint(0, 50, (23, 9), generator=torch.Generator().manual_seed(2))
        harvest_tokens(StandIn(), ids, "resid.1", out, {"model": "stand-in"}, batch=4, shard_windows=5,
                       outlier_norm=10.0, progress=False)
    shutdown()
''')


def _harvest(torchrun, tmp_path, kind, out, ranks):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    args = [kind, str(out), str(TAEF2)]
    if ranks == 1:
        done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300)
    else:
        done = torchrun([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
                         str(script), *args])
    assert done.returncode == 0, torchrun.failure(done)


def _assert_same_store(one: Path, two: Path, atol: float = 0.0) -> None:
    a, b = ActivationStore(one, verify=True), ActivationStore(two, verify=True)
    assert (a.n_windows, a.done_items, a.window_shape, a.grid, a.map_hw, a.identity) == \
           (b.n_windows, b.done_items, b.window_shape, b.grid, b.map_hw, b.identity)
    torch.testing.assert_close(a.gather(torch.arange(a.n_windows)), b.gather(torch.arange(b.n_windows)),
                               rtol=0, atol=atol)
    assert torch.equal(a.image_index(), b.image_index())
    assert not list(two.glob(".rank*")), "rank folders left behind"


def test_two_ranks_harvest_the_image_stores_one_process_harvests(torchrun, tmp_path):
    _harvest(torchrun, tmp_path, "maps", tmp_path / "one", 1)
    _harvest(torchrun, tmp_path, "maps", tmp_path / "two", 2)
    for hook in ("latent", "encoder.down.2"):  # each rank convolves with its own share of the threads: rounding
        _assert_same_store(tmp_path / "one" / hook, tmp_path / "two" / hook, atol=1e-5)
    assert ActivationStore(tmp_path / "two" / "encoder.down.2").n_windows == 9 * 4  # 8x8 maps in 4x4 tiles
    before = ActivationStore(tmp_path / "two" / "latent").shards
    _harvest(torchrun, tmp_path, "maps", tmp_path / "two", 2)  # finished: run again, nothing is harvested again
    assert ActivationStore(tmp_path / "two" / "latent").shards == before


def test_two_ranks_leave_out_the_windows_one_process_leaves_out(torchrun, tmp_path):
    _harvest(torchrun, tmp_path, "tokens", tmp_path / "one", 1)
    _harvest(torchrun, tmp_path, "tokens", tmp_path / "two", 2)
    _assert_same_store(tmp_path / "one", tmp_path / "two")
    ids = torch.randint(0, 50, (23, 9), generator=torch.Generator().manual_seed(2))
    planted = int((ids[:, 1:] == 7).any(1).sum())
    assert 0 < planted and ActivationStore(tmp_path / "two").n_windows == 23 - planted


def test_ranks_share_whole_batches_in_order():
    assert [rank_items(9, 2, 2, r) for r in range(2)] == [(0, 6), (6, 9)]  # 5 batches: 3 and 2
    assert [rank_items(23, 4, 3, r) for r in range(3)] == [(0, 8), (8, 16), (16, 23)]
    assert [rank_items(3, 4, 2, r) for r in range(2)] == [(0, 3), (3, 3)]  # a rank may have nothing to do
