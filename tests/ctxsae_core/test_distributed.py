"""Data-parallel training under torchrun, on the CPU with the gloo backend: 2 ranks of B windows
train the same weights as 1 process of 2B windows (same seed), for per-position TopK,
BatchTopK (whose pooled cut-off spans both ranks) and the contextual SAE with the gated carry
and its shuffled control; an interrupted 2-rank run resumes to the same weights; and
`ctxsae train --nproc 2` is the documented command."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from ctxsae_common.files import load_tensors
from ctxsae_core.distributed import Group

WORKER = textwrap.dedent('''
    import sys
    import torch
    from ctxsae_core import BatchTopK, ContextualConfig, SAEConfig, TopK, TrainConfig, make_axis
    from ctxsae_core.data import WindowBatches
    from ctxsae_core.distributed import init_from_env, shutdown
    from ctxsae_core.checkpoint import build_sae
    from ctxsae_core.trainer import Trainer

    arch, per_rank, out, crash_after, shuffle = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"
    group, device = init_from_env("cpu")
    T, D = 8, 16
    g = torch.Generator().manual_seed(1)
    atoms = torch.randn(24, D, generator=g)
    codes = (torch.rand(96, T, 24, generator=g) < 0.15).float() * torch.rand(96, T, 24, generator=g)
    data = (codes @ atoms + 0.05 * torch.randn(96, T, D, generator=g)).double()
    if arch == "contextual":
        cfg = ContextualConfig(d_in=D, width=64, activation=BatchTopK(k=3), carry="gated")
    else:
        cfg = SAEConfig(d_in=D, width=64, activation=(TopK if arch == "topk" else BatchTopK)(k=4))
    steps = 8
    tc = TrainConfig(tokens=steps * per_rank * group.world * T, lr=3e-3, seed=5, shuffle_context=shuffle,
                     progress=False, checkpoint_every=2, eval_every=0, log_every=1)

    class Crashing(WindowBatches):
        def iter_from(self, step):
            for i, batch in enumerate(super().iter_from(step)):
                if i == crash_after:
                    raise SystemExit(3)
                yield batch

    batches = (Crashing if crash_after >= 0 else WindowBatches)(data, per_rank, seed=5)
    torch.manual_seed(tc.seed)
    model = build_sae(cfg).double()  # float64: sums taken in another order round alike
    Trainer(model, tc, make_axis("tokens", T), out_dir=out, device=device).fit(batches)
    shutdown()
''')


def _launch(torchrun, tmp_path, arch, per_rank, out, ranks, crash_after=-1, shuffle=False):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    args = [arch, str(per_rank), str(out), str(crash_after), "1" if shuffle else "0"]
    if ranks == 1:
        return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300)
    return torchrun([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
                     str(script), *args], retry=crash_after < 0)  # a run crashed on purpose is not retried


def _weights(folder):
    return load_tensors(folder / "model.safetensors")


def _assert_same_weights(a, b, rtol=1e-9, atol=1e-10):
    """Equal up to rounding. In float32, Adam turns gradient entries that cancel to ~1e-9 (in
    either sum order) into steps of ~lr / 10, so the worker trains in float64."""
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize("arch, shuffle", [("topk", False), ("batchtopk", False), ("contextual", False),
                                           ("contextual", True)])
def test_two_ranks_train_what_one_process_trains_on_their_union(torchrun, tmp_path, arch, shuffle):
    single = _launch(torchrun, tmp_path, arch, 8, tmp_path / "one", ranks=1, shuffle=shuffle)
    assert single.returncode == 0, torchrun.failure(single)
    double = _launch(torchrun, tmp_path, arch, 4, tmp_path / "two", ranks=2, shuffle=shuffle)
    assert double.returncode == 0, torchrun.failure(double)
    one, two = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    _assert_same_weights(one, two)
    moved = (one["W_dec_FD"] - load_tensors(tmp_path / "one" / "checkpoints" / "step_00000008" /
                                            "model.safetensors")["W_dec_FD"]).abs().max()
    assert float(moved) == 0  # the final save is the last step's weights
    if arch == "batchtopk":  # the inference threshold came from the global batch's cut-offs
        assert float(one["activation.threshold"]) > 0
        torch.testing.assert_close(one["activation.threshold"], two["activation.threshold"])


def test_an_interrupted_two_rank_run_resumes_to_the_same_weights(torchrun, tmp_path):
    whole = _launch(torchrun, tmp_path, "contextual", 4, tmp_path / "whole", ranks=2)
    assert whole.returncode == 0, torchrun.failure(whole)
    broken = _launch(torchrun, tmp_path, "contextual", 4, tmp_path / "resumed", ranks=2, crash_after=5)
    assert broken.returncode != 0
    assert (tmp_path / "resumed" / "checkpoints" / "LATEST").read_text().strip() == "step_00000004"
    resumed = _launch(torchrun, tmp_path, "contextual", 4, tmp_path / "resumed", ranks=2)
    assert resumed.returncode == 0, torchrun.failure(resumed)
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "resumed")
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("arch", ["topk", "contextual"])
def test_ctxsae_train_nproc_matches_one_process_with_the_global_batch(torchrun, tmp_path, arch):
    """Through the CLI, held-out rows and their learning curve included: rank 0 alone evaluates,
    and a BatchTopK threshold set for its held-out points is its own windows' (a cut-off gathered
    over the ranks there waited forever for rank 1)."""
    acts = np.random.default_rng(0).standard_normal((160, 8, 12)).astype(np.float32)
    np.save(tmp_path / "acts.npy", acts)
    common = ["--acts", str(tmp_path / "acts.npy"), "--arch", arch, "--k", "3", "--width", "48", "--tokens", "6400",
              "--no-progress", "--device", "cpu"]
    one = subprocess.run([sys.executable, "-m", "ctxsae_core.cli", "train", *common, "--batch-tokens", "128",
                          "--out", str(tmp_path / "one")], capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, torchrun.failure(one)
    two = torchrun([sys.executable, "-m", "ctxsae_core.cli", "train", *common, "--batch-tokens", "64", "--nproc", "2",
                    "--out", str(tmp_path / "two")], timeout=120)
    assert two.returncode == 0, torchrun.failure(two)
    # float32 through the CLI: Adam's steps on entries whose gradient cancels differ by up to ~lr / 10
    _assert_same_weights(_weights(tmp_path / "one"), _weights(tmp_path / "two"), rtol=1e-3, atol=1e-3)
    assert two.stdout.count("fvu ") == 1  # rank 0 alone reports
    curves = [[json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
              for run in ("one", "two")]
    curves = [[(e["step"], e["fvu"], e["l0"]) for e in lines if e["split"] == "eval"] for lines in curves]
    assert len(curves[0]) >= 8 and [e[0] for e in curves[0]] == [e[0] for e in curves[1]]
    for (_, fvu1, l01), (_, fvu2, l02) in zip(*curves):
        assert fvu2 == pytest.approx(fvu1, rel=1e-2) and l02 == pytest.approx(l01, rel=1e-2)


def test_rank_slices_partition_a_global_batch():
    class Rank(Group):
        def __init__(self, rank, world):
            self.rank, self.world = rank, world

    rows = [list(range(12))[Rank(r, 3).rank_slice(12)] for r in range(3)]
    assert rows == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
