"""tools/ptxas_diff.py on two synthetic ptxas -v logs (no nvcc): kernels matched across builds
whose anonymous-namespace tags differ, register and spill changes, the blocks-per-SM mark where
the register count crosses an occupancy line, kernels on one side only, and errors naming what is
wrong."""
import importlib.util
import pathlib

TOOLS = pathlib.Path(__file__).resolve().parents[2] / "tools"
spec = importlib.util.spec_from_file_location("ptxas_diff", TOOLS / "ptxas_diff.py")
ptxas_diff = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ptxas_diff)

NS_OLD = "_ZN8clawmine7backend4cuda53_GLOBAL__N__fb26bba1_20_linear_gemv_wgmma_cu_b9eda056"
NS_NEW = "_ZN8clawmine7backend4cuda53_GLOBAL__N__0a1b2c3d_20_linear_gemv_wgmma_cu_77777777"
K1 = "17gemv_wgmma_kernelILNS1_4WFmtE6ELi16ELi1ELi0EEEvNS1_8GemmArgsEPfPj"
K2 = "17gemv_wgmma_kernelILNS1_4WFmtE3ELi8ELi8ELi0EEEvNS1_8GemmArgsEPfPj"
K3 = "17gemv_wgmma_kernelILNS1_4WFmtE5ELi32ELi1ELi0EEEvNS1_8GemmArgsEPfPj"


def log(ns, entries):
    lines = []
    for kernel, regs, spill in entries:
        lines += [f"ptxas info    : Compiling entry function '{ns}{kernel}' for 'sm_90a'",
                  "ptxas info    : Function properties for x",
                  f"    0 bytes stack frame, {spill} bytes spill stores, {spill} bytes spill loads",
                  f"ptxas info    : Used {regs} registers, used 1 barriers, 128 bytes smem"]
    return "\n".join(lines) + "\n"


def test_blocks_per_sm():
    # 128 threads: 128 registers -> 4 blocks, 129..168 -> 3, 169..255 -> 2; 80 -> 6, 72 -> 7.
    assert [ptxas_diff.blocks_per_sm(r, 128) for r in (72, 80, 128, 129, 168, 169, 255)] == [7, 6, 4, 3, 3, 2, 2]
    assert ptxas_diff.blocks_per_sm(32, 256) == 8  # the SM's 2048 threads, not its registers
    assert ptxas_diff.blocks_per_sm(16, 32) == 32  # the SM's 32 blocks


def test_parse_matches_kernels_across_builds():
    old = ptxas_diff.parse_ptxas(log(NS_OLD, [(K1, 142, 0), (K2, 124, 4)]))
    new = ptxas_diff.parse_ptxas(log(NS_NEW, [(K1, 184, 0), (K2, 124, 4)]))
    assert set(old) == set(new)
    assert sorted(old.values()) == [(124, 4, 4), (142, 0, 0)]


def test_report_marks_occupancy_changes(tmp_path, tool_output):
    a, b = tmp_path / "old.log", tmp_path / "new.log"
    a.write_text(log(NS_OLD, [(K1, 142, 0), (K2, 124, 0), (K3, 139, 0)]))
    b.write_text(log(NS_NEW, [(K1, 184, 0), (K2, 126, 8)]))
    out = tool_output("ptxas_diff.py", "--logs", a, b)
    assert "2 kernels, 3 differ (blocks/SM at 128 threads)" in out
    assert "! 142 -> 184 registers (3 -> 2 blocks/SM), spills 0/0 -> 0/0 B" in out
    assert "  124 -> 126 registers (4 -> 4 blocks/SM), spills 0/0 -> 8/8 B" in out
    assert "base only: 139 registers" in out
    # Readable names where c++filt exists; the format id and instance either way.
    assert "WFmt" in out and ("gemv_wgmma_kernel<(clawmine::backend::cuda::WFmt)6, 16, 1, 0>" in out
                              or K1 in out)
    assert tool_output("ptxas_diff.py", "--logs", a, a).endswith("3 kernels, 0 differ (blocks/SM at 128 threads)\n")


def test_a_kernel_whose_parameters_changed_is_paired_with_itself():
    old_k = "_Z17moe_router_kernelIfEvPKT_i"  # void moe_router_kernel<float>(float const*, int)
    new_k = "_Z17moe_router_kernelIfEvPKT_ii"  # ... (float const*, int, int)
    other = "_Z17moe_router_kernelIiEvPKT_i"  # the <int> instance, unchanged
    pretty = {"a": "void ns::moe_router_kernel<__nv_bfloat16, __nv_bfloat16, int>(__nv_bfloat16 const*, int)",
              "b": "void ns::moe_router_kernel<__nv_bfloat16, __nv_bfloat16, int>(__nv_bfloat16 const*, int, int)",
              "c": "void ns::(anonymous namespace)::gemv<(ns::WFmt)5, 1>(ns::GemmArgs, void (*)(int))",
              "d": "void ns::(anonymous namespace)::gemv<(ns::WFmt)6, 1>(ns::GemmArgs)",
              "e": "_Z8mangled"}
    assert ptxas_diff.without_parameters(pretty["c"]) == "void ns::(anonymous namespace)::gemv<(ns::WFmt)5, 1>"
    assert ptxas_diff.without_parameters(pretty["e"]) is None
    # One of each side with the same instance pairs; different template arguments do not.
    assert ptxas_diff.pair_by_instance(["a", "c"], ["b", "d"], pretty) == {"a": "b"}
    old = ptxas_diff.parse_ptxas(log("", [(old_k, 123, 0), (other, 80, 0)]))
    new = ptxas_diff.parse_ptxas(log("", [(new_k, 233, 0), (other, 80, 0)]))
    lines = ptxas_diff.diff_lines(old, new, 256)
    if ptxas_diff.shutil.which("c++filt"):
        assert len(lines) == 1 and lines[0].startswith("! 123 -> 233 registers (2 -> 1 blocks/SM)")
        assert "(parameters changed)" in lines[0] and "moe_router_kernel" in lines[0]
    else:  # mangled names: listed on each side
        assert sorted(line.split(":")[0].strip() for line in lines) == ["base only", "new only"]


def test_errors_name_the_argument(tmp_path, run_tool):
    r = run_tool("ptxas_diff.py", "--logs", tmp_path / "missing.log", tmp_path / "other.log")
    assert r.returncode != 0 and "--logs" in r.stderr and "missing.log" in r.stderr
    ok = tmp_path / "a.log"
    ok.write_text(log(NS_OLD, [(K1, 142, 0)]))
    r = run_tool("ptxas_diff.py", "--logs", ok, ok, "--threads", "0")
    assert r.returncode != 0 and "--threads 0" in r.stderr
    r = run_tool("ptxas_diff.py")
    assert r.returncode != 0 and "CUDA source file" in r.stderr
