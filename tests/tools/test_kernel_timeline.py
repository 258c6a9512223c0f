"""tools/kernel_timeline.py on a small synthetic `clawmine bench --kernel-trace` file: spans, the
union of busy time, main-stream gaps (negative where a programmatic launch began early), kinds with
the C++ ABI's demangled names, and errors naming what is wrong."""
import sys

import pytest

NS = "clawmine::backend::cuda::(anonymous namespace)::"
EMBED = f"void {NS}embed_kernel<__nv_bfloat16, __nv_bfloat16, 1>(clawmine::backend::cuda::EmbedArgs)"
HC = f"void {NS}hc_site_fused_kernel<4, float, __nv_bfloat16>(clawmine::backend::cuda::HcSiteArgs)"
EXPERTS = (f"void {NS}gemv_stream_kernel<(clawmine::backend::cuda::WFmt)5, true, 2>(clawmine::backend::cuda::GemmArgs, "
           f"clawmine::backend::cuda::(anonymous namespace)::StreamShape)")
SHARED = f"void {NS}gemv_kernel<(clawmine::backend::cuda::WFmt)3, __nv_bfloat16, 1>(clawmine::backend::cuda::GemmArgs)"
HEAD = f"void {NS}gemv_kernel3<(clawmine::backend::cuda::WFmt)1, __nv_bfloat16, 1>(clawmine::backend::cuda::GemmArgs)"

# (step, start us, end us, stream, name) -- step 1: the experts start 1 us before the hc site ends
# (PDL), the shared expert overlaps them on stream 14, and the main stream idles 1 us before the head.
ROWS = [
    (0, 0.0, 2.0, 13, EMBED), (0, 2.5, 40.0, 13, HEAD),
    (1, 100.0, 103.0, 13, EMBED), (1, 103.5, 110.0, 13, HC), (1, 109.0, 130.0, 13, EXPERTS),
    (1, 105.0, 115.0, 14, SHARED), (1, 131.0, 160.0, 13, HEAD),
]


def write_trace(path, rows=ROWS):
    lines = ["# clawmine kernel trace: test model, decode batch 1; 2 decode steps",
             "step,start_ns,end_ns,stream,graph,graph_node,grid,block,name"]
    for step, s, e, stream, name in rows:
        lines.append(f'{step},{int(s * 1000)},{int(e * 1000)},{stream},1,7,128x6x1,256x1x1,"{name}"')
    path.write_text("\n".join(lines) + "\n")


def timeline(tmp_path, tool_output, rows):
    """kernel_timeline.py's output for a trace of these rows."""
    trace = tmp_path / "trace.csv"
    write_trace(trace, rows)
    return tool_output("kernel_timeline.py", trace)


def test_steps_kinds_and_gaps(tmp_path, tool_output):
    trace = tmp_path / "t.csv"
    write_trace(trace)
    out = tool_output("kernel_timeline.py", trace, "--sequence")
    assert out.startswith("kernel timeline: clawmine kernel trace: test model")
    # Step 1: span 60 us; busy = [100,103] + [103.5,130] + [131,160] = 3 + 26.5 + 29 = 58.5; idle 1.5;
    # main stream 4 kernels, busy 3 + 6.5 + 21 + 29 = 59.5, gaps 0.5 - 1.0 + 1.0 = 0.5.
    assert "| 1 | 5 | 60.0 | 58.5 | 1.5 | 4 | 59.5 | 0.5 |" in out
    assert "| 0 | 2 | 40.0 | 39.5 | 0.5 | 2 | 39.5 | 0.5 |" in out
    assert "step 1: 5 kernels over 60.0 us (main stream 13)" in out
    assert "| LM head GEMV | 1 | 29.0 | 29.0 | 48.3% |" in out
    assert "| MXFP4 / NVFP4 streaming GEMV (routed experts, FP4 projections) | 1 | 21.0 | 21.0 | 35.0% |" in out
    assert "| FP8 / FP4 FMA GEMV (small projections) | 1 | 10.0 | 0.0 | 0.0% |" in out
    assert "main stream: 4 kernels, 3 gaps: 1.5 us idle over 2 gaps" in out
    assert "1 kernels began before the one ahead ended (by 1.0 us in all)" in out
    # The sequence, in start order, with each kernel's gap on its own stream.
    assert "| 9.00 | 21.00 | -1.00 | 13 | 128x6x1 | 256x1x1 | gemv_stream_kernel<5, 1, 2> |" in out
    assert "| 5.00 | 10.00 | - | 14 | 128x6x1 | 256x1x1 | gemv_kernel<3, __nv_bfloat16, 1> |" in out


def test_layers_by_kind(tmp_path, tool_output):
    # Three layers after the first site: CSA (an indexer kernel, 30 us), HCA (a compressor, 20 us),
    # sliding (10 us); a layer ends where the site after its MoE's combine ends.
    comb = f"void {NS}moe_combine_kernel<__nv_bfloat16, __nv_bfloat16>(float const*)"
    idx = f"void {NS}indexer_tile_kernel<__nv_bfloat16, __nv_bfloat16, 1>(int)"
    cmp = f"void {NS}compress_store_kernel<__nv_bfloat16, 2, 1, 0>(int)"
    rows = [(0, 0.0, 1.0, 13, comb), (0, 1.0, 2.0, 13, HC),
            (0, 3.0, 5.0, 13, idx), (0, 20.0, 28.0, 13, comb), (0, 28.0, 32.0, 13, HC),
            (0, 33.0, 35.0, 14, cmp), (0, 45.0, 50.0, 13, comb), (0, 50.0, 52.0, 13, HC),
            (0, 53.0, 60.0, 13, comb), (0, 60.0, 62.0, 13, HC)]
    out = timeline(tmp_path, tool_output, rows)
    assert "| CSA | 1 | 30.0 | 30.0 | 30.0 |" in out
    assert "| HCA | 1 | 20.0 | 20.0 | 20.0 |" in out
    assert "| sliding | 1 | 10.0 | 10.0 | 10.0 |" in out


def test_csa_without_an_indexer_kernel(tmp_path, tool_output):
    # At short contexts a CSA layer's top-k takes every entry, so no indexer kernel runs: its two
    # compressor stores (the layer's keys and the indexer's) make it CSA, one makes a layer HCA.
    comb = f"void {NS}moe_combine_kernel<__nv_bfloat16, __nv_bfloat16>(float const*)"
    cmp = f"void {NS}compress_store_kernel<__nv_bfloat16, 2, 1, 0>(int)"
    icmp = f"void {NS}compress_store_kernel<__nv_bfloat16, 1, 2, 4>(int)"
    rows = [(0, 0.0, 1.0, 13, comb), (0, 1.0, 2.0, 13, HC),
            (0, 3.0, 5.0, 14, cmp), (0, 3.5, 5.5, 15, icmp), (0, 20.0, 28.0, 13, comb), (0, 28.0, 32.0, 13, HC),
            (0, 33.0, 35.0, 14, cmp), (0, 45.0, 50.0, 13, comb), (0, 50.0, 52.0, 13, HC)]
    out = timeline(tmp_path, tool_output, rows)
    assert "| CSA | 1 | 30.0 | 30.0 | 30.0 |" in out
    assert "| HCA | 1 | 20.0 | 20.0 | 20.0 |" in out


def test_what_attention_waited_for(tmp_path, tool_output):
    # An HCA layer: the site ends at 10; the queries' chain on stream 13 (wq_b to 30, its norm/rope
    # to 34), the keys' chain on stream 14 (a compressor to 36); the attention starts at 35 (a
    # programmatic launch, before its last input ends): 25 us to its start, 26 to the compressor's end.
    att = f"void {NS}attn::attention_decode_mma_kernel<__nv_bfloat16, 512>(int)"
    merge = f"void {NS}attn::attention_decode_merge_kernel<__nv_bfloat16>(int)"
    cmp = f"void {NS}compress_store_kernel<__nv_bfloat16, 2, 1, 0>(int)"
    nr = f"void {NS}norm_rope_qdq_kernel<__nv_bfloat16, 2, 1, 0>(int)"
    rows = [(0, 5.0, 10.0, 13, HC), (0, 11.0, 30.0, 13, EXPERTS), (0, 29.0, 34.0, 13, nr),
            (0, 12.0, 36.0, 14, cmp), (0, 35.0, 40.0, 13, att), (0, 39.0, 42.0, 13, merge)]
    out = timeline(tmp_path, tool_output, rows)
    assert "| HCA | 1 | 25.0 | 26.0 | compress_store_kernel (1) |" in out


def test_moe_phases(tmp_path, tool_output):
    # One MoE after the site that ends at 5: the route on stream 13 to 8, the routed gate/up to 30 and
    # down to 40 there, the shared expert on stream 14 (gate/up to 33, down to 42), the combine to 43
    # and the next site to 50: us after 5.
    route = f"void {NS}moe_route_block_kernel<int>(float const*)"
    comb = f"void {NS}moe_combine_kernel<__nv_bfloat16, __nv_bfloat16>(float const*)"
    down = f"void {NS}gemv_wgmma_kernel<(clawmine::backend::cuda::WFmt)5, 16, 1>(clawmine::backend::cuda::GemmArgs)"
    rows = [(0, 0.0, 5.0, 13, HC), (0, 5.5, 7.0, 13, HEAD), (0, 6.0, 8.0, 13, route), (0, 7.0, 30.0, 13, EXPERTS),
            (0, 9.0, 33.0, 14, SHARED), (0, 29.0, 40.0, 13, down), (0, 33.0, 42.0, 14, SHARED),
            (0, 40.0, 43.0, 13, comb), (0, 42.0, 50.0, 13, HC)]
    out = timeline(tmp_path, tool_output, rows)
    assert ("| MoE phase (median us after the site before it) | layers | route | routed gate/up | routed down | "
            "shared gate/up | shared down | combine | next site | routed down after its gate/up |") in out
    assert "| sliding | 1 | 3.0 | 25.0 | 35.0 | 28.0 | 37.0 | 38.0 | 45.0 | 10.0 |" in out
    # The shared expert on the route's stream (CLAWMINE_BRANCHES=1): before the routed launches, so
    # the last two GEMVs are still the routed ones, and no shared columns.
    one = [(0, 0.0, 5.0, 13, HC), (0, 6.0, 8.0, 13, route), (0, 8.0, 12.0, 13, SHARED), (0, 12.0, 16.0, 13, SHARED),
           (0, 16.0, 30.0, 13, EXPERTS), (0, 30.0, 40.0, 13, down), (0, 40.0, 43.0, 13, comb), (0, 43.0, 50.0, 13, HC)]
    assert "| sliding | 1 | 3.0 | 25.0 | 35.0 | - | - | 38.0 | 45.0 | 10.0 |" in timeline(tmp_path, tool_output, one)


def test_registers_held_beside_the_streaming_gemvs(tmp_path, tool_output):
    # Traces with the regs column (and the SM count in the header): a streaming GEMV from 10 to 30 us
    # and another from 40 to 50; compress_store (64 blocks x 256 threads x 109 registers) from 5 to 25
    # overlaps the first for 15 us: 109 * 256 * 64 / (132 * 65536) = 20.6% of the register file, 3.1
    # register-file us. The hc site ends before any GEMV starts, so it is not listed.
    cmp = f"void {NS}compress_store_kernel<__nv_bfloat16, 2, 1, 0>(int)"
    lines = ["# clawmine kernel trace: test model, NVIDIA H100 80GB HBM3, sm_90, 132 SMs, 79.2 GiB; 1 decode steps",
             "step,start_ns,end_ns,stream,graph,graph_node,grid,block,regs,smem,name"]
    for s, e, stream, grid, block, regs, name in [
            (0.0, 4.0, 13, "64x1x1", "256x1x1", 128, HC), (5.0, 25.0, 14, "64x1x1", "256x1x1", 109, cmp),
            (10.0, 30.0, 13, "2048x1x1", "32x1x1", 96, EXPERTS), (40.0, 50.0, 13, "256x1x1", "256x1x1", 96, EXPERTS)]:
        lines.append(f'0,{int(s * 1000)},{int(e * 1000)},{stream},1,7,{grid},{block},{regs},12288,"{name}"')
    trace = tmp_path / "r.csv"
    trace.write_text("\n".join(lines) + "\n")
    out = tool_output("kernel_timeline.py", trace)
    assert "| registers held beside the streaming GEMVs (132 SMs) |" in out
    assert "| compress_store_kernel<__nv_bfloat16, 2, 1, 0> | 1 | 109 | 256 | 20.6% | 15.0 | 3.1 |" in out
    assert "hc_site" not in out.split("registers held")[1].split("main stream")[0]
    # --sms overrides the header: on 66 SMs the same launch is 41.3%.
    assert "| 41.3% | 15.0 | 6.2 |" in tool_output("kernel_timeline.py", trace, "--sms", "66")
    # Traces written before the regs column have no such table.
    old = tmp_path / "t.csv"
    write_trace(old)
    assert "registers held" not in tool_output("kernel_timeline.py", old)


def test_step_option(tmp_path, run_tool, tool_output):
    trace = tmp_path / "t.csv"
    write_trace(trace)
    assert "step 0: 2 kernels over 40.0 us" in tool_output("kernel_timeline.py", trace, "--step", "0")
    r = run_tool("kernel_timeline.py", trace, "--step", "5")
    assert r.returncode != 0 and "no step 5" in r.stderr


def test_against_a_base_trace(tmp_path, run_tool, tool_output):
    base = tmp_path / "base.csv"
    write_trace(base)
    # The same step with the experts 6 us longer, the shared expert 2 us shorter, the head unchanged
    # and one kernel the base does not have.
    extra = f"void {NS}moe_combine_kernel<__nv_bfloat16, __nv_bfloat16>(int)"
    rows = [(1, 100.0, 103.0, 13, EMBED), (1, 103.5, 110.0, 13, HC), (1, 109.0, 136.0, 13, EXPERTS),
            (1, 105.0, 113.0, 14, SHARED), (1, 136.5, 138.0, 13, extra), (1, 138.0, 167.0, 13, HEAD)]
    trace = tmp_path / "t.csv"
    write_trace(trace, rows)
    out = tool_output("kernel_timeline.py", trace, "--against", base)
    assert "against base.csv (its step 1): span 60.0 -> 67.0 us (+7.0)" in out
    table = out.split("| kernel (against the base trace) |")[1]
    lines = [ln for ln in table.splitlines() if ln.startswith("| ") and "---" not in ln]
    # Largest change first: the experts (+6), the shared expert (-2), the new combine (+1.5).
    assert lines[0] == "| gemv_stream_kernel<5, 1, 2> | 1 | 21.0 | 27.0 | +6.0 | +29% |"
    assert lines[1] == "| gemv_kernel<3, __nv_bfloat16, 1> | 1 | 10.0 | 8.0 | -2.0 | -20% |"
    assert lines[2] == "| moe_combine_kernel<__nv_bfloat16, __nv_bfloat16> | 0 -> 1 | 0.0 | 1.5 | +1.5 | new |"
    assert "| gemv_kernel3<1, __nv_bfloat16, 1> | 1 | 29.0 | 29.0 | +0.0 | +0% |" in table
    # The base's same step when it has it, else its last one.
    assert "(its step 0): span 40.0 -> 40.0 us (+0.0)" in tool_output("kernel_timeline.py", base, "--step", "0",
                                                                     "--against", base)
    only1 = tmp_path / "only1.csv"
    write_trace(only1, [r for r in ROWS if r[0] == 1])
    assert "(its step 1): span 60.0 -> 40.0 us (-20.0)" in tool_output("kernel_timeline.py", base, "--step", "0",
                                                                      "--against", only1)
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    r = run_tool("kernel_timeline.py", trace, "--against", bad)
    assert r.returncode != 0 and "lacks columns" in r.stderr


def test_not_a_trace_is_a_clear_error(tmp_path, run_tool):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    r = run_tool("kernel_timeline.py", bad)
    assert r.returncode != 0 and "lacks columns" in r.stderr
    empty = tmp_path / "empty.csv"
    empty.write_text("# only a comment\n")
    r = run_tool("kernel_timeline.py", empty)
    assert r.returncode != 0 and "no kernel rows" in r.stderr


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_prefill_kinds(tmp_path, tool_output):
    # A `--prefill-trace` file: the BF16 copy of a weight, cuBLAS on it, the tiled GEMM and the
    # prefill attention get kinds of their own.
    dq = f"void {NS}dequant_bf16_kernel(clawmine::backend::cuda::DequantArgs)"
    cublas = "void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_64x4_tn_align8>(int)"
    mma = f"void {NS}gemm_mma_kernel<(clawmine::backend::cuda::WFmt)3>(clawmine::backend::cuda::GemmArgs, int, int)"
    attn = f"void {NS}attention_mma_kernel<__nv_bfloat16>(int)"
    rows = [(0, 0.0, 4.0, 13, dq), (0, 4.0, 14.0, 13, cublas), (0, 14.0, 20.0, 13, mma), (0, 20.0, 23.0, 13, attn)]
    out = timeline(tmp_path, tool_output, rows)
    assert "| BF16 copies of quantized weights (dequant_bf16) | 1 | 4.0 |" in out
    assert "| cuBLAS GEMM (prefill projections on the BF16 copies) | 1 | 10.0 |" in out
    assert "| tiled GEMM (gemm_mma / gemm_fma) | 1 | 6.0 |" in out
    assert "| prefill attention (attention_mma, merge_splits) | 1 | 3.0 |" in out
