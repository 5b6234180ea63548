"""``jadapt.machine``: the line every benchmark and study report carries (CPU model, usable
cores, the flags that decide whether bf16 is fast)."""
from __future__ import annotations

from pathlib import Path

from jadapt import machine


def test_isa_and_bf16_class_from_flags():
    amx = {"fpu", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
    assert machine.cpu_isa(amx) == "amx_bf16, amx_tile, avx512_bf16, avx512f"
    assert machine.bf16_class(amx) == "amx"
    assert machine.bf16_class({"avx512f", "avx512_bf16"}) == "avx512_bf16"
    assert machine.cpu_isa({"sse2", "avx2"}) == "no amx / avx512" and machine.bf16_class({"avx2"}) == "none"


def test_machine_line_names_this_cpu():
    line = machine.machine_line()
    assert machine.cpu_model() in line and f"{machine.cores()} cores" in line and "ISA: " in line
    assert machine.cpu_isa() in line
    flags = machine.cpu_flags()
    assert ("amx_bf16" in line) == ("amx_bf16" in flags)


def test_matmul_benchmark_prints_the_machine_first(monkeypatch, capsys):
    """Every benchmark prints the machine line (the cheapest one is run here)."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_matmul

    monkeypatch.setattr(bench_matmul, "SHAPES", {"tiny": (1, 8, 8, 8)})
    bench_matmul.main()
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"machine: {machine.machine_line()}" and out[1].startswith("tiny")
