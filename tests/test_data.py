"""mlsim.data: formats, units, splits, self energies, statistics, validation, sampling."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlsim.data import Dataset, Structure, read, sample, sample_trajectory, write
from mlsim.units import EV_PER_KCAL_PER_MOL, energy_factor, length_factor


def _water(rng: np.random.Generator, i: int, labelled: bool = True) -> Structure:
    pos = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]]) + rng.normal(
        0, 0.03, (3, 3)
    )
    return Structure(
        numbers=[8, 1, 1],
        positions=pos,
        energy=float(rng.normal(-10.0, 1.0)) if labelled else None,
        forces=rng.normal(0, 1, (3, 3)) if labelled else None,
        info={"frame": i, "tag": f"w{i}"},
    )


@pytest.fixture
def waters() -> Dataset:
    rng = np.random.default_rng(7)
    return Dataset([_water(rng, i) for i in range(12)])


def _same(a: Structure, b: Structure, atol: float = 1e-7) -> None:
    np.testing.assert_array_equal(a.numbers, b.numbers)
    np.testing.assert_allclose(a.positions, b.positions, atol=atol)
    assert a.energy == pytest.approx(b.energy, abs=atol * 10)
    np.testing.assert_allclose(a.forces, b.forces, atol=atol)


@pytest.mark.parametrize("name", ["d.extxyz", "d.extxyz.gz", "d.xyz", "d.npz", "d.db"])
def test_round_trip(tmp_path, waters, name):
    path = tmp_path / name
    write(path, waters)
    back = read(path, require_forces=True)
    assert len(back) == len(waters)
    for a, b in zip(waters, back, strict=True):
        _same(a, b)
        assert b.info["frame"] == a.info["frame"] and b.info["tag"] == a.info["tag"]
    # and across formats: npz -> db -> extxyz.gz keeps the numbers
    write(tmp_path / "x.db", back)
    write(tmp_path / "x.extxyz.gz", read(tmp_path / "x.db"))
    for a, b in zip(waters, read(tmp_path / "x.extxyz.gz"), strict=True):
        _same(a, b)


def test_gzip_is_really_compressed(tmp_path, waters):
    write(tmp_path / "d.extxyz.gz", waters)
    assert gzip.decompress((tmp_path / "d.extxyz.gz").read_bytes()).startswith(b"3\n")


def test_periodic_round_trip(tmp_path):
    s = Structure(
        numbers=[29] * 2,
        positions=[[0, 0, 0], [1.8, 1.8, 0]],
        cell=np.eye(3) * 3.6,
        pbc=True,
        energy=-1.0,
        forces=np.zeros((2, 3)),
        stress=np.arange(6) * 0.01,
    )
    for name in ("p.extxyz", "p.db", "p.npz"):
        write(tmp_path / name, [s])
        b = read(tmp_path / name)[0]
        np.testing.assert_allclose(b.cell, s.cell)
        assert b.pbc.all()
    np.testing.assert_allclose(read(tmp_path / "p.extxyz")[0].stress, s.stress, atol=1e-8)


def test_md17_npz_units_and_mmap(tmp_path):
    rng = np.random.default_rng(0)
    n_frames, z = 5, np.array([6, 1, 1, 1, 1])
    r_bohr = rng.normal(0, 1.5, (n_frames, 5, 3)) + np.arange(5)[None, :, None] * 2.5
    e_kcal = rng.normal(-1000, 5, (n_frames, 1))  # MD17 stores E as (n, 1)
    f_kcal_bohr = rng.normal(0, 30, (n_frames, 5, 3))
    path = tmp_path / "md17.npz"
    np.savez(path, z=z, R=r_bohr, E=e_kcal, F=f_kcal_bohr)
    with pytest.raises(ValueError, match="carry no units"):
        read(path)
    ds = read(path, energy_unit="kcal/mol", length_unit="bohr")
    lf, ef = length_factor("bohr"), energy_factor("kcal/mol")
    assert ef == pytest.approx(EV_PER_KCAL_PER_MOL)
    assert lf == pytest.approx(0.529177210903)
    np.testing.assert_allclose(ds[3].positions, r_bohr[3] * lf)
    assert ds[3].energy == pytest.approx(e_kcal[3, 0] * ef)
    np.testing.assert_allclose(ds[3].forces, f_kcal_bohr[3] * ef / lf)
    # uncompressed npz: R and F are memory-mapped, not loaded
    assert isinstance(ds._source.R, np.memmap) and isinstance(ds._source.F, np.memmap)
    # compressed npz still reads (fully loaded)
    np.savez_compressed(tmp_path / "c.npz", z=z, R=r_bohr, E=e_kcal, F=f_kcal_bohr)
    dc = read(tmp_path / "c.npz", energy_unit="kcal/mol", length_unit="bohr")
    np.testing.assert_allclose(dc[4].forces, ds[4].forces)
    # writing in other units records them; reading back gives the same eV/A numbers
    write(tmp_path / "k.npz", ds, energy_unit="kcal/mol", length_unit="nm")
    with np.load(tmp_path / "k.npz") as f:
        np.testing.assert_allclose(f["R"][3], r_bohr[3] * lf / 10)
    back = read(tmp_path / "k.npz")
    np.testing.assert_allclose(back[3].forces, ds[3].forces)
    with pytest.raises(ValueError, match="records energy unit"):
        read(tmp_path / "k.npz", energy_unit="eV", length_unit="nm")


def test_indexing_and_views(waters):
    assert isinstance(waters[3], Structure) and waters[-1].info["frame"] == 11
    sub = waters[2:8:2]
    assert isinstance(sub, Dataset) and [s.info["frame"] for s in sub] == [2, 4, 6]
    assert [s.info["frame"] for s in sub[[2, 0]]] == [6, 2]
    assert [s.info["frame"] for s in waters[np.arange(12) % 5 == 0]] == [0, 5, 10]
    with pytest.raises(IndexError):
        waters[12]


def test_split_deterministic_and_disjoint(waters):
    a = waters.split(0.5, 0.25, seed=3)
    b = waters.split(0.5, 0.25, seed=3)
    c = waters.split(0.5, 0.25, seed=4)
    frames = [[s.info["frame"] for s in part] for part in a]
    assert frames == [[s.info["frame"] for s in part] for part in b]
    assert frames != [[s.info["frame"] for s in part] for part in c]
    assert [len(p) for p in a] == [6, 3]
    assert not set(frames[0]) & set(frames[1])
    assert [len(p) for p in waters.split(10, 2)] == [10, 2]
    with pytest.raises(ValueError):
        waters.split(10, 5)
    with pytest.raises(ValueError):
        waters.split(0.8, 0.3)


def test_self_energies_recover_known_values():
    rng = np.random.default_rng(1)
    true = {1: -13.6, 6: -1029.0, 8: -2041.5}
    structures = []
    for _ in range(40):
        counts = {
            1: int(rng.integers(0, 7)),
            6: int(rng.integers(0, 4)),
            8: int(rng.integers(1, 3)),
        }
        numbers = [z for z, c in counts.items() for _ in range(c)]
        pos = np.arange(len(numbers))[:, None] * np.array([1.1, 0.0, 0.0])
        e = sum(true[z] * c for z, c in counts.items()) + rng.normal(0, 1e-3)
        structures.append(Structure(numbers=numbers, positions=pos, energy=e))
    fit = Dataset(structures).fit_self_energies()
    assert set(fit) == set(true)
    for z in true:
        assert fit[z] == pytest.approx(true[z], abs=5e-3)


def test_self_energies_single_composition_reproduce_mean(waters):
    fit = waters.fit_self_energies()
    mean = np.mean([s.energy for s in waters])
    assert fit[8] + 2 * fit[1] == pytest.approx(mean, abs=1e-9)
    assert fit[1] / fit[8] == pytest.approx(2.0)  # minimum norm: proportional to the counts (1, 2)
    # with a prior, the degenerate direction is taken from it
    fit = waters.fit_self_energies(prior={1: -13.0, 8: -2000.0})
    assert fit[8] + 2 * fit[1] == pytest.approx(mean, abs=1e-9)
    shift = (mean - (-2000.0 - 26.0)) / 5.0  # the deviation is along the counts (1, 2)
    assert fit[8] == pytest.approx(-2000.0 + shift) and fit[1] == pytest.approx(-13.0 + 2 * shift)


def test_stats(waters):
    st = waters.stats()
    assert st["n_structures"] == 12 and st["elements"] == {1: 24, 8: 12}
    energies = [s.energy for s in waters]
    assert st["energy_min"] == pytest.approx(min(energies)) and st["energy_max"] == pytest.approx(
        max(energies)
    )
    allf = np.concatenate([s.forces.ravel() for s in waters])
    assert st["force_rms"] == pytest.approx(np.sqrt(np.mean(allf**2)))


@pytest.mark.parametrize(
    ("mutate", "match", "kwargs"),
    [
        (
            lambda s: s.positions.__setitem__((1, 0), np.nan),
            "structure 4: non-finite.*position",
            {},
        ),
        (lambda s: s.forces.__setitem__((2, 1), np.inf), "structure 4: non-finite.*force", {}),
        (
            lambda s: s.positions.__setitem__(1, s.positions[0] + [0.3, 0, 0]),
            "structure 4: atoms 0 and 1 are 0.300 A",
            {},
        ),
        (lambda s: s.numbers.__setitem__(0, 150), "structure 4: unknown element.*150", {}),
        (
            lambda s: setattr(s, "forces", None),
            "structure 4: forces are missing",
            {"require_forces": True},
        ),
    ],
)
def test_validation_names_structure(tmp_path, waters, mutate, match, kwargs):
    bad = [
        Structure(s.numbers.copy(), s.positions.copy(), energy=s.energy, forces=s.forces.copy())
        for s in waters
    ]
    mutate(bad[4])
    with pytest.raises(ValueError, match=match):
        Dataset(bad).validate(**kwargs)
    if "unknown" not in match:  # ASE refuses to even write Z=150
        write(tmp_path / "bad.extxyz", bad)
        with pytest.raises(ValueError, match="bad.extxyz: " + match):
            read(tmp_path / "bad.extxyz", **kwargs)


def test_validation_inconsistent_atom_counts_in_npz(tmp_path):
    np.savez(tmp_path / "b.npz", z=np.array([1, 1, 8]), R=np.zeros((2, 4, 3)))
    with pytest.raises(ValueError, match="inconsistent atom counts"):
        read(tmp_path / "b.npz", energy_unit="eV", length_unit="angstrom")
    ds = Dataset(
        [_water(np.random.default_rng(0), 0), Structure([1, 1], [[0, 0, 0], [0.74, 0, 0]])]
    )
    with pytest.raises(ValueError, match="structure 1: has 2 atoms"):
        ds.validate(same_n_atoms=True)


def test_periodic_clash_through_boundary():
    s = Structure([1, 1], [[0.1, 0, 0], [4.7, 0, 0]], cell=np.eye(3) * 5.0, pbc=True)
    with pytest.raises(ValueError, match="structure 0: atoms 0 and 1 are 0.400 A"):
        Dataset([s]).validate()
    s.pbc[:] = False
    s.cell = None
    Dataset([s]).validate()


def test_sample_langevin_and_trajectory(tmp_path):
    from ase.calculators.emt import EMT

    start = Structure([29] * 4, [[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0], [0, 0, 2.5]])
    kw = dict(every=5, timestep_fs=2.0, equilibration_fs=20.0, seed=11, progress=False)
    a = sample(start, EMT, [300.0, 900.0], 3, **kw)
    b = sample(start, EMT(), [300.0, 900.0], 3, **kw)
    assert len(a) == 6 and [s.info["temperature_K"] for s in a] == [300.0] * 3 + [900.0] * 3
    assert a[2].info["time_fs"] == pytest.approx(20.0 + 3 * 5 * 2.0)
    assert a[2].info["md_calculator"] == "EMT"
    for x, y in zip(a, b, strict=True):  # same seed -> same trajectory
        np.testing.assert_allclose(x.positions, y.positions)
    assert not np.allclose(a[0].positions, start.positions)
    c = sample(start, EMT, [300.0, 900.0], 3, **(kw | {"seed": 12}))
    assert not np.allclose(a[0].positions, c[0].positions)
    write(tmp_path / "traj.extxyz", a)
    thin = sample_trajectory(tmp_path / "traj.extxyz", every=2, start=1)
    np.testing.assert_allclose(thin[1].positions, a[3].positions)
    from ase.io import write as ase_write

    ase_write(tmp_path / "t.traj", [s.to_atoms() for s in a])
    assert len(sample_trajectory(tmp_path / "t.traj", every=3)) == 2
    with pytest.raises(ValueError):
        sample(start, EMT, [-5.0], 2)


def test_cli_data_info_and_convert(tmp_path, waters, capsys):
    from mlsim.cli import main

    write(tmp_path / "w.extxyz.gz", waters)
    assert main(["data", "convert", str(tmp_path / "w.extxyz.gz"), str(tmp_path / "w.npz")]) == 0
    assert main(["data", "info", str(tmp_path / "w.npz")]) == 0
    out = capsys.readouterr().out
    assert "structures    12" in out and "H 24, O 12" in out
    assert f"max {max(s.energy for s in waters):.6f}" in out
    assert main(["data", "info", str(tmp_path / "missing.extxyz")]) == 1
    assert "not found" in capsys.readouterr().err


def test_split_fractions_summing_to_one_use_everything():
    ds = Dataset([Structure([1], [[0.0, 0, 0]], info={"k": k}) for k in range(10)])
    parts = ds.split(1 / 3, 1 / 3, 1 / 3, seed=0)
    assert sum(len(p) for p in parts) == 10
    assert sorted(s.info["k"] for p in parts for s in p) == list(range(10))


def test_shipped_ethanol_files():
    from mlsim.data import ethanol_path

    geo = read(ethanol_path("test", "geometries"))
    xtb = read(ethanol_path("test", "xtb"), require_forces=True)
    assert len(geo) == len(xtb) == 300
    assert sorted(geo[0].numbers.tolist()) == [1] * 6 + [6] * 2 + [8]
    assert {s.info["temperature_K"] for s in geo} == {300.0, 600.0}
    np.testing.assert_allclose(xtb[17].positions, geo[17].positions, atol=1e-6)
    # Train, validation and test come from disjoint trajectories (no leakage between the splits).
    seeds = {
        p: {s.info["seed"] for s in read(ethanol_path(p, "geometries"))}
        for p in ("train", "val", "test")
    }
    assert seeds == {"train": {1, 2, 3, 4}, "val": {201}, "test": {101, 102}}
    assert len(read(ethanol_path("val", "xtb"), require_forces=True)) == 50
    with pytest.raises(ValueError, match="part must be"):
        ethanol_path("validation")


def test_unit_options_only_for_npz(tmp_path, waters):
    write(tmp_path / "w.extxyz", waters)
    assert len(read(tmp_path / "w.extxyz", energy_unit="eV", length_unit="Angstrom")) == 12
    with pytest.raises(ValueError, match="unit options apply to npz only"):
        read(tmp_path / "w.extxyz", energy_unit="kcal/mol")
    with pytest.raises(ValueError, match="unit options apply to npz only"):
        write(tmp_path / "w.db", waters, length_unit="nm")
    with pytest.raises(ValueError, match="unknown energy unit"):
        read(tmp_path / "w.extxyz", energy_unit="furlongs")


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(-20, 19), max_size=15),
    st.lists(st.integers(0, 200), max_size=10),
    st.integers(0, 2**31),
)
def test_views_compose_like_numpy(first, second, seed):
    ds = Dataset([Structure([1], [[float(k), 0, 0]], info={"k": k}) for k in range(20)])
    ref = np.arange(20)[np.asarray(first, dtype=np.int64)]
    view = ds[np.asarray(first, dtype=np.int64)]
    assert [s.info["k"] for s in view] == ref.tolist()
    if len(ref):
        idx = np.asarray(second, dtype=np.int64) % len(ref)
        assert [s.info["k"] for s in view[idx]] == ref[idx].tolist()
    parts = ds.split(0.5, 0.3, seed=seed)
    got = [s.info["k"] for p in parts for s in p]
    assert len(got) == len(set(got)) == 16


def test_rmd17_key_names(tmp_path):
    rng = np.random.default_rng(2)
    r = rng.normal(0, 1.0, (3, 2, 3)) + np.array([[0, 0, 0], [2.0, 0, 0]])
    np.savez(
        tmp_path / "r.npz",
        nuclear_charges=np.array([1, 9]),
        coords=r,
        energies=np.array([-1.0, -2.0, -3.0]),
        forces=np.ones((3, 2, 3)),
    )
    ds = read(tmp_path / "r.npz", energy_unit="kcal/mol", length_unit="angstrom")
    assert ds[2].energy == pytest.approx(-3.0 * EV_PER_KCAL_PER_MOL)
    np.testing.assert_allclose(ds[1].positions, r[1])
    np.testing.assert_allclose(ds[0].forces, EV_PER_KCAL_PER_MOL)


def test_cli_split_and_sample(tmp_path, waters, capsys):
    from mlsim.cli import main

    write(tmp_path / "w.extxyz", waters)
    outs = [str(tmp_path / f"{k}.extxyz") for k in ("a", "b")]
    assert main(["data", "split", str(tmp_path / "w.extxyz"), "8", "4", "--out", *outs]) == 0
    parts = waters.split(8, 4, seed=0)
    for part, out in zip(parts, outs, strict=True):
        assert [s.info["frame"] for s in read(out)] == [s.info["frame"] for s in part]
    write(tmp_path / "cu.xyz", [Structure([29, 29], [[0, 0, 0], [2.5, 0, 0]])])
    args = ["data", "sample", str(tmp_path / "cu.xyz"), "--calc", "ase.calculators.emt:EMT"]
    args += ["--temperatures", "300", "--frames", "3", "--every", "4", "--equilibration", "10"]
    assert main([*args, "--out", str(tmp_path / "s.extxyz")]) == 0
    got = read(tmp_path / "s.extxyz")
    assert len(got) == 3 and got[0].info["temperature_K"] == 300.0


def test_npz_vectorised_validation_names_frame(tmp_path):
    rng = np.random.default_rng(5)
    r = rng.normal(0, 0.02, (50, 3, 3)) + np.array([[0, 0, 0], [1.0, 0, 0], [0, 1.0, 0]])
    f = rng.normal(0, 1, (50, 3, 3))
    kw = {"energy_unit": "eV", "length_unit": "angstrom"}
    np.savez(tmp_path / "ok.npz", z=[8, 1, 1], R=r, F=f)
    assert len(read(tmp_path / "ok.npz", require_forces=True, **kw)) == 50
    with pytest.raises(ValueError, match="structure 0: energy is missing"):
        read(tmp_path / "ok.npz", require_energy=True, **kw)
    f2 = f.copy()
    f2[31, 2, 0] = np.nan
    np.savez(tmp_path / "nan.npz", z=[8, 1, 1], R=r, F=f2)
    with pytest.raises(ValueError, match="structure 31: non-finite.*force on atom 2"):
        read(tmp_path / "nan.npz", **kw)
    r2 = r.copy()
    r2[17, 2] = r2[17, 1] + [0.0, 0.2, 0.0]
    r2[40, 0, 0] = np.inf
    np.savez(tmp_path / "clash.npz", z=[8, 1, 1], R=r2)
    with pytest.raises(ValueError, match="structure 17: atoms 1 and 2 are 0.200 A"):
        read(tmp_path / "clash.npz", **kw)
    # in nm the same numbers are 10x farther apart: no clash, only the inf in frame 40
    with pytest.raises(ValueError, match="structure 40: non-finite"):
        read(tmp_path / "clash.npz", energy_unit="eV", length_unit="nm")


def _frame_starts(data: bytes) -> list[int]:
    return [k for k in range(len(data)) if data.startswith(b"3\nProperties", k)]


def test_truncated_or_corrupt_extxyz_is_an_error_naming_file_and_frame(tmp_path, waters):
    """Issue #17: a truncated or corrupt tail used to be dropped with a warning (exit 0)."""
    path = tmp_path / "w.extxyz"
    write(path, waters)
    data = path.read_bytes()
    starts = _frame_starts(data)
    path.write_bytes(data[: starts[7] + 60])  # cut inside frame 7
    with pytest.raises(
        ValueError, match=rf"w\.extxyz: frame 7 \(byte {starts[7]}\): the file ends inside"
    ):
        read(path)
    bad = bytearray(data)  # one flipped bit in frame 4: not UTF-8 any more
    bad[starts[4] + 200] ^= 0x80
    path.write_bytes(bytes(bad))
    with pytest.raises(
        ValueError,
        match=rf"frame 4 \(byte {starts[4]}\): invalid byte 0x.. at byte {starts[4] + 200}",
    ):
        read(path)
    # a garbled number in frame 5: ASE's error, with the frame
    line = data.index(b"\nO ", starts[5]) + 1
    path.write_bytes(data[: line + 12] + b"1.2#4" + data[line + 17 :])
    with pytest.raises(
        ValueError, match=rf"w\.extxyz: frame 5 \(byte {starts[5]}\): cannot parse it"
    ):
        read(path)
    # a count line that is not one (e.g. a merged or lost line)
    path.write_bytes(data[: starts[9]] + b"three\n" + data[starts[9] + 2 :])
    with pytest.raises(
        ValueError, match=rf"frame 9 \(byte {starts[9]}\): expected a frame's atom-count line"
    ):
        read(path)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"w\.extxyz: empty file: no frames"):
        read(path)


def test_truncated_or_misnamed_gzip_is_an_error(tmp_path, waters):
    path = tmp_path / "w.extxyz.gz"
    write(path, waters)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # one member, cut: not a single frame is certain
    with pytest.raises(
        ValueError, match=r"w\.extxyz\.gz: frame 0 \(gzip member at byte 0\): the file ends inside"
    ):
        read(path)
    path.write_bytes(gzip.decompress(data))  # text named .gz
    with pytest.raises(ValueError, match=r"w\.extxyz\.gz: frame 0 .*not gzip data"):
        read(path)
    (tmp_path / "z.extxyz").write_bytes(data)  # gzip named .extxyz
    with pytest.raises(ValueError, match=r"z\.extxyz: frame 0 \(byte 0\): this is gzip-compressed"):
        read(tmp_path / "z.extxyz")
    # members appended after a complete stream are read; garbage after them is an error
    path.write_bytes(data + gzip.compress(_one_frame(waters[0])))
    assert len(read(path)) == 13
    path.write_bytes(data + b"\x00" * 8)
    with pytest.raises(
        ValueError, match=rf"frame 12 \(gzip member at byte {len(data)}\): the bytes from"
    ):
        read(path)


def _one_frame(s: Structure) -> bytes:
    from mlsim.data._io import _frame_text

    return _frame_text(s).encode()


def test_blank_lines_and_missing_final_newline_lose_no_frame(tmp_path, waters):
    """ASE's reader stops at a blank line, silently dropping every frame after it."""
    text = b"\n".join(_one_frame(s) for s in waters)  # a blank line between frames
    (tmp_path / "b.extxyz").write_bytes(text.rstrip(b"\n"))  # and no newline at the very end
    back = read(tmp_path / "b.extxyz", require_forces=True)
    assert [s.info["frame"] for s in back] == list(range(12))
    _same(back[11], waters[11])


def test_cli_convert_refuses_truncated_input(tmp_path, waters, capsys):
    from mlsim.cli import main

    write(tmp_path / "w.extxyz", waters)
    data = (tmp_path / "w.extxyz").read_bytes()
    (tmp_path / "w.extxyz").write_bytes(data[:-40])
    assert main(["data", "convert", str(tmp_path / "w.extxyz"), str(tmp_path / "o.npz")]) == 1
    assert "w.extxyz: frame 11 (byte" in capsys.readouterr().err
    assert not (tmp_path / "o.npz").exists()


def test_atomic_numbers_outside_the_periodic_table(tmp_path, capsys):
    from mlsim.cli import main

    for z in (119, 0, -1):
        with pytest.raises(ValueError, match=rf"atom 1: atomic number {z} is outside 1\.\.118"):
            Structure([1, z], [[0, 0, 0], [1.0, 0, 0]])
    r = np.zeros((3, 2, 3))
    r[:, 1, 0] = 1.0
    kw = {"energy_unit": "eV", "length_unit": "angstrom"}
    np.savez(tmp_path / "a.npz", z=[8, -1], R=r)
    with pytest.raises(
        ValueError, match=r"a\.npz: atom 1 \(of every structure\): atomic number -1"
    ):
        read(tmp_path / "a.npz", **kw)
    np.savez(tmp_path / "b.npz", z=[[8, 1], [8, 1], [119, 1]], R=r)
    with pytest.raises(
        ValueError, match=r"b\.npz: structure 2, atom 0: atomic number 119 is outside"
    ):
        read(tmp_path / "b.npz", validate=False, **kw)
    # `data info` says so (it used to print Z=-1 as "Og" and fail on 119 with an IndexError)
    args = ["--energy-unit", "eV", "--length-unit", "angstrom", "--no-validate"]
    assert main(["data", "info", str(tmp_path / "a.npz"), *args]) == 1
    err = capsys.readouterr()
    assert "atomic number -1" in err.err and "Og" not in err.out
    # an extxyz with a Z column beyond the table: the error names the frame and atom
    text = "1\nProperties=species:S:1:pos:R:3:Z:I:1\nH 0.0 0.0 0.0 1\n"
    text += "1\nProperties=species:S:1:pos:R:3:Z:I:1\nH 0.0 0.0 0.0 119\n"
    (tmp_path / "z.extxyz").write_text(text)
    second = text.index("1\nProp", 1)
    with pytest.raises(
        ValueError, match=rf"z\.extxyz: frame 1 \(byte {second}\): .*atom 0: atomic number 119"
    ):
        read(tmp_path / "z.extxyz")


def test_npz_unit_hint_names_real_options(tmp_path, capsys):
    from mlsim.cli import build_parser, main

    np.savez(tmp_path / "m.npz", z=[8, 1, 1], R=np.array([[[0, 0, 0], [1.0, 0, 0], [0, 1.0, 0]]]))
    with pytest.raises(
        ValueError, match=r"pass it \(command line: --energy-unit; Python: energy_unit=\)"
    ):
        read(tmp_path / "m.npz")
    assert main(["data", "info", str(tmp_path / "m.npz")]) == 1
    assert "--energy-unit" in capsys.readouterr().err
    # every command that reads a data file that may be npz has the options the hint names
    parser = build_parser()
    units = ["--energy-unit", "kcal/mol", "--length-unit", "bohr"]
    for cmd in (
        ["data", "info", "m.npz"],
        ["data", "convert", "m.npz", "o.extxyz"],
        ["data", "split", "m.npz", "1", "--out", "a.npz"],
        ["data", "sample", "m.npz", "--temperatures", "300", "--frames", "1", "--out", "s.xyz"],
        ["label", "m.npz", "--method", "xtb", "--out", "o.extxyz"],
        ["evaluate", "model.pt", "m.npz"],
    ):
        args = parser.parse_args([*cmd, *units])
        assert (args.energy_unit, args.length_unit) == ("kcal/mol", "bohr"), cmd


def test_evaluate_reads_npz_with_units(tmp_path, capsys):
    import json

    from mlsim.cli import main
    from mlsim.data import ethanol_path

    test = read(ethanol_path("val", "dft"))[:4]
    ev = [s.energy for s in test]
    np.savez(  # MD17-style, in kcal/mol and Angstrom, units not recorded
        tmp_path / "t.npz",
        z=test[0].numbers,
        R=np.stack([s.positions for s in test]),
        E=np.array(ev) / EV_PER_KCAL_PER_MOL,
        F=np.stack([s.forces for s in test]) / EV_PER_KCAL_PER_MOL,
    )
    model = str(ethanol_path("val", "dft").parent / "model.pt")
    write(tmp_path / "t.extxyz", test)
    assert main(["evaluate", model, str(tmp_path / "t.extxyz"), "--json", "--no-progress"]) == 0
    ref = json.loads(capsys.readouterr().out)
    npz = ["evaluate", model, str(tmp_path / "t.npz"), "--json", "--no-progress"]
    assert main(npz) == 1
    assert "--energy-unit" in capsys.readouterr().err
    assert main([*npz, "--energy-unit", "kcal/mol", "--length-unit", "angstrom"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["n_structures"] == 4
    assert got["force_mae_meV_per_A"] == pytest.approx(ref["force_mae_meV_per_A"], rel=1e-6)


def test_sample_keeps_md_labels_and_shows_equilibration_progress(monkeypatch):
    import tqdm
    from ase.calculators.emt import EMT

    updates: list[int] = []

    class Bar:
        def __init__(self, *args: object, total: int, **kwargs: object) -> None:
            self.total = total

        def update(self, n: int = 1) -> None:
            updates.append(n)

        def close(self) -> None:
            pass

    monkeypatch.setattr(tqdm, "tqdm", Bar)
    start = Structure([29] * 4, [[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0], [0, 0, 2.5]])
    kw = dict(every=5, timestep_fs=2.0, equilibration_fs=40.0, seed=3)
    got = sample(start, EMT, [300.0], 2, **kw)
    # step by step, equilibration (20 steps) included, not one jump when it is over
    assert updates == [1] * (20 + 2 * 5)
    for s in got:
        assert s.info["method"] == "EMT"
        atoms = s.to_atoms()
        atoms.calc = EMT()
        assert s.energy == pytest.approx(atoms.get_potential_energy(), abs=1e-10)
        np.testing.assert_allclose(s.forces, atoms.get_forces(), atol=1e-10)
