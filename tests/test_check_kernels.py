"""``simclr-fast check-kernels``: the launched Triton variants compile for sm_80 and sm_90 without a
GPU, without spills, with tensor cores in the 16-bit hot loops.

The report fixture runs the command's default plan (every loss, dtype, D ∈ {64, 100, 128, 256}, both
architectures). ``make test`` runs the same command first, so Triton's on-disk cache and the
disassembly cache are warm here (seconds); cold it takes a minute or two on 2 cores. Compilation
runs in spawned worker processes, so it works although this pytest process imported Triton in
interpreter mode.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

from simclr_fast import check_kernels, cli  # noqa: E402

KEYS = {
    "kernel",
    "arch",
    "dtype",
    "D",
    "precision",
    "specialization",
    "block_m",
    "block_n",
    "num_warps",
    "num_stages",
    "regs",
    "spills",
    "smem_bytes",
    "tensor_core",
    "instrs_per_element",
    "losses",
}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    path = tmp_path_factory.mktemp("check") / "report.json"
    code = cli.main(["check-kernels", "--arch", "sm_80", "sm_90", "--json", str(path)])
    return code, json.loads(path.read_text())


def test_exit_code_zero(report):
    code, rows = report
    assert code == 0, [(r["kernel"], r["arch"], r["dtype"], r["D"], r["status"]) for r in rows]


def test_rows_cover_every_loss_and_case_with_forward_and_backward(report):
    _, rows = report
    for loss in check_kernels.LOSSES:
        for arch in check_kernels.ARCHS:
            for dtype in check_kernels.DTYPES:
                precisions = check_kernels.FP32_PRECISIONS if dtype == "fp32" else ("-",)
                for d in check_kernels.DEFAULT_D:
                    for precision in precisions:
                        case = (arch, dtype, d, precision)
                        kernels = [
                            r["kernel"]
                            for r in rows
                            if (r["arch"], r["dtype"], r["D"], r["precision"]) == case
                            and loss in r["losses"]
                        ]
                        assert "forward" in kernels and "backward" in kernels, (loss, case)
    for r in rows:
        assert set(r) >= KEYS, KEYS - set(r)
        assert r["specialization"] == "launched"


def test_integer_arguments_specialized_like_the_jit(report):
    """Every launched int divisible by 16 carries tt.divisibility, and 1 becomes a constant."""
    _, rows = report
    ragged = 0
    for r in rows:
        if "error" in r:
            continue
        assert r["int_args"], r["kernel"]
        for name, value in r["int_args"].items():
            if value == 1:
                assert r["constexprs"].get(name) == 1, (r["kernel"], name)
            elif value % 16 == 0:
                assert name in r["divisible_by_16"], (r["kernel"], name, value)
            else:
                assert name not in r["divisible_by_16"], (r["kernel"], name, value)
                ragged += 1
    assert ragged  # D = 100 launches an int not divisible by 16: the unaligned variant is checked


def test_resources_and_tensor_cores_in_the_hot_loop(report):
    _, rows = report
    for r in rows:
        cc = check_kernels.ARCHS[r["arch"]]
        assert 0 < r["regs"] <= 255 and r["spills"] == 0, r
        assert 0 < r["smem_bytes"] <= check_kernels.SMEM_LIMIT[cc], r
        assert r["instrs_per_element"] > 0, r
        if check_kernels.wants_tensor_cores(r):
            assert (r["tensor_core"] or "").startswith(check_kernels.TC_OPCODE[cc]), r


def test_json_to_stdout_table_to_stderr(capsys):
    code = cli.main(["check-kernels", "--arch", "sm_90", "--dtype", "bf16", "--d", "128", "--json"])
    out, err = capsys.readouterr()
    rows = json.loads(out)
    assert {r["kernel"] for r in rows} >= {"forward", "backward"}
    assert all((r["arch"], r["dtype"], r["D"]) == ("sm_90", "bf16", 128) for r in rows)
    assert "launched variants" in err and "nothing ran on a GPU" in err
    assert code == (1 if any(r["status"] != "ok" for r in rows) else 0)


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--d", "0"], "--d must be >= 1"),
        (["--n", "7"], "--n is 2B"),
        (["--jobs", "0"], "--jobs"),
        (["--temperature", "0"], "--temperature must be"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(argv, needle):
    with pytest.raises(ValueError, match=needle):
        cli.main(["check-kernels", *argv])


def test_kernel_label():
    assert check_kernels.kernel_label("_ntxent_fwd_kernel") == "forward"
    assert check_kernels.kernel_label("_ntxent_bwd_kernel") == "backward"
    assert check_kernels.kernel_label("_ntxent_bwd_split_kernel") == "backward_split"


_SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;             /* 0x0 */
        /*0010*/                   S2R R0, SR_CTAID.X ;               /* 0x0 */
        /*0020*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8], RZ ; /* 0x0 */
        /*0030*/                   FADD R2, R2, R3 ;                  /* 0x0 */
        /*0040*/                   HMMA.16816.F32 R4, R8, R10, R4 ;   /* 0x0 */
        /*0050*/               @P0 BRA 0x40 ;                         /* 0x0 */
        /*0060*/                   MUFU.EX2 R5, R5 ;                  /* 0x0 */
        /*0070*/              @!P1 BRA 0x30 ;                         /* 0x0 */
        /*0080*/                   STL [R1], R2 ;                     /* 0x0 */
        /*0090*/                   LDS R6, [R7] ;                     /* 0x0 */
        /*00a0*/               @P2 BRA 0x90 ;                         /* 0x0 */
        /*00b0*/                   EXIT ;                             /* 0x0 */
        /*00c0*/                   BRA 0xc0;                          /* 0x0 */
"""


def test_hot_loop_is_the_largest_outer_loop_with_nested_loops_weighted():
    instrs = check_kernels.parse_sass(_SASS)
    assert len(instrs) == 13 and instrs[2] == (0x20, "HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8], RZ")
    loop = check_kernels.hot_loop(instrs, inner_trips=3)
    # outer loop 0x30..0x70 (5 instructions) holds the inner loop 0x40..0x50 (2, run 3 times);
    # 0x90..0xa0 is a smaller outer loop, the self-branch at 0xc0 is no loop
    assert (loop["start"], loop["end"], loop["static"], loop["nested_loops"]) == (0x30, 0x70, 5, 1)
    assert loop["instructions"] == 3 + 2 * 3
    assert "HMMA.16816.F32" in loop["opcodes"] and not any(
        op.startswith("HGMMA") for op in loop["opcodes"]
    )
    assert check_kernels.hot_loop(instrs[:5]) is None


_SASS_BRANCHY = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8], RZ ;
        /*0020*/               @P3 BRA 0x60 ;
        /*0030*/                   FSEL R2, R2, -INF , P4 ;
        /*0040*/                   FSEL R3, R3, -INF , P5 ;
        /*0050*/                   FSEL R4, R4, -INF , P6 ;
        /*0060*/                   MUFU.EX2 R5, R5 ;
        /*0070*/               @P0 BRA 0x90 ;
        /*0080*/                   BRA 0xb0 ;
        /*0090*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8], R24 ;
        /*00a0*/                   FADD R6, R6, R7 ;
        /*00b0*/              @!P1 BRA 0x10 ;
        /*00c0*/                   EXIT ;
"""


def test_main_path_skips_optional_branches_but_keeps_the_tensor_cores():
    loop = check_kernels.hot_loop(check_kernels.parse_sass(_SASS_BRANCHY))
    assert (loop["start"], loop["end"], loop["loop_instructions"]) == (0x10, 0xB0, 11)
    # the mask branch (0x30-0x50) is skipped; the branch holding the second HGMMA is taken over
    # the shorter one that jumps past it: 0x10 0x20 0x60 0x70 0x90 0xa0 0xb0
    assert loop["instructions"] == 7
    assert "FSEL" not in loop["opcodes"] and "FSEL" in loop["loop_opcodes"]
    assert "FADD" in loop["opcodes"]


def _row(**kw):
    row = dict(
        kernel="backward",
        arch="sm_90",
        dtype="bf16",
        D=128,
        precision="-",
        regs=168,
        spills=0,
        smem_bytes=43008,
        tensor_core="HGMMA.64x128x16.F32.BF16",
        instrs_per_element=11.4,
    )
    row.update(kw)
    return row


def test_verdict_flags_each_defect():
    assert check_kernels.verdict(_row()) == "ok"
    assert "2 spill" in check_kernels.verdict(_row(spills=2))
    assert "shared memory" in check_kernels.verdict(_row(smem_bytes=10**6))
    # sm_90 needs wgmma (HGMMA) in the hot loop: mma.sync (HMMA) or nothing fails
    assert "no HGMMA" in check_kernels.verdict(_row(tensor_core="HMMA.16816.F32.BF16"))
    assert "no HMMA" in check_kernels.verdict(_row(arch="sm_80", tensor_core=None))
    assert check_kernels.verdict(_row(arch="sm_80", tensor_core="HMMA.16816.F32.BF16")) == "ok"
    # fp32: tensor cores required under "high" only
    assert check_kernels.verdict(_row(dtype="fp32", precision="highest", tensor_core=None)) == "ok"
    assert "no HGMMA" in check_kernels.verdict(
        _row(dtype="fp32", precision="high", tensor_core=None)
    )
    assert check_kernels.verdict(_row(error="CompilationError: boom")).startswith("FAIL")
    # the instructions-per-element goal (sm_90 bf16 D = 128, NT-Xent's variants) when enforced
    slow = _row(instrs_per_element=16.0)
    assert "goal 15" in check_kernels.verdict(slow, enforce_goal=True)
    assert check_kernels.verdict(slow, enforce_goal=False) == "ok"
    assert check_kernels.verdict(dict(slow, losses=["memory_bank"]), enforce_goal=True) == "ok"
    assert check_kernels.verdict(dict(slow, D=64), enforce_goal=True) == "ok"
    assert check_kernels.verdict(_row(instrs_per_element=14.0), enforce_goal=True) == "ok"


_BROKEN_LOSS = """
import json, simclr_fast
from simclr_fast import check_kernels as ck
def broken(*args, **kwargs):
    raise ValueError("broken loss")
simclr_fast.nt_xent = broken
case = dict(loss="nt_xent", dtype="bf16", d=64, n=64, temperature=0.1, precision="-")
case["archs"] = ["sm_80", "sm_90"]
print(json.dumps([ck.verdict(r) for r in ck.probe(case)]))
"""


def test_a_probe_that_fails_is_a_failing_row_per_arch():
    # the probe must run where Triton was imported without the interpreter: a fresh process
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run(
        [sys.executable, "-c", _BROKEN_LOSS], env=env, capture_output=True, text=True, check=True
    )
    statuses = json.loads(out.stdout.strip().splitlines()[-1])
    assert statuses == ["FAIL: probe: ValueError: broken loss"] * 2
