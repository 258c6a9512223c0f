"""tools/decode_profile.py on small synthetic ncu CSVs (the layout of `ncu --csv --print-units base`):
the last decode step is found, classified and summed, with and without the DRAM bytes metric."""
import sys

import pytest

HEADER = ('"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size",'
          '"Grid Size","Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"')

# (name, stream, grid, ns, bytes): a prefill kernel, a first decode step, then the last one.
KERNELS = [
    ("void clawmine::<unnamed>::fill_kernel<float>(T1 *, long, float)", 13, "(16, 1, 1)", 2592, 4096),
    ("void clawmine::backend::cuda::<unnamed>::embed_kernel<__nv_bfloat16>(Args)", 13, "(1, 1, 1)", 3000, 8192),
    ("void clawmine::backend::cuda::<unnamed>::gemv_stream_kernel<3, 0, 1>(GemmArgs, StreamShape)", 13,
     "(2048, 1, 1)", 20000, 33_554_432),
    ("void clawmine::backend::cuda::<unnamed>::gemv_kernel3<1, __nv_bfloat16, 1>(GemmArgs)", 13, "(32320, 1, 1)",
     300000, 1_059_061_760),
    ("void clawmine::backend::cuda::<unnamed>::embed_kernel<__nv_bfloat16>(Args)", 13, "(1, 1, 1)", 4000, 8192),
    ("void clawmine::backend::cuda::<unnamed>::hc_site_fused_kernel<4, float, __nv_bfloat16>(Args)", 13,
     "(1, 64, 1)", 11000, 1_000_000),
    ("void clawmine::backend::cuda::<unnamed>::gemv_stream_kernel<5, 1, 2>(GemmArgs, StreamShape)", 14,
     "(128, 6, 1)", 34000, 53_477_376),
    ("void clawmine::backend::cuda::<unnamed>::gemv_kernel3<1, __nv_bfloat16, 1>(GemmArgs)", 13, "(32320, 1, 1)",
     335000, 1_059_061_760),
]


def write_csv(path, with_bytes):
    lines = ["==PROF== Connected to process 1 (clawmine)", "decode batch 1 at context 64: not CSV", HEADER]
    for i, (name, stream, grid, ns, nbytes) in enumerate(KERNELS):
        common = f'"{i}","1","clawmine","127.0.0.1","{name}","1","{stream}","(256, 1, 1)","{grid}","0","9.0","Command line profiler metrics"'
        if with_bytes:  # ncu lists a kernel's metrics in name order
            lines.append(f'{common},"dram__bytes_read.sum","byte","{nbytes:,}"')
        lines.append(f'{common},"gpu__time_duration.sum","ns","{ns:,}"')
    path.write_text("\n".join(lines) + "\n")


def test_the_last_step_with_dram_bytes(tmp_path, tool_output):
    csv = tmp_path / "ncu.csv"
    write_csv(csv, with_bytes=True)
    out = tool_output("decode_profile.py", csv, "--sequence")
    # The last step: embed, hc site, MXFP4 experts, head = 4 kernels, 384 us, 1113.5 MB.
    assert out.startswith("decode step: 4 kernels, 384 us of kernel time (serialized under ncu), 1114 MB read from DRAM")
    assert "| kind | us | kernels | share | MB read | TB/s |" in out
    # The last GEMV is the LM head; the experts' launch is an FP4 streaming GEMV at 53.5 MB / 34 us.
    assert "| LM head GEMV | 335.0 | 1 | 87.2% | 1059.1 | 3.16 |" in out
    assert "| MXFP4 / NVFP4 streaming GEMV (routed experts, FP4 projections) | 34.0 | 1 | 8.9% | 53.5 | 1.57 |" in out
    # Launch order with streams; nothing of the first step.
    seq = out[out.index("| us | MB read | TB/s | stream |"):].splitlines()[2:]
    assert [row.split(" | ")[-1].rstrip(" |") for row in seq] == [
        "embed_kernel<__nv_bfloat16>", "hc_site_fused_kernel<4, float, __nv_bfloat16>",
        "gemv_stream_kernel<5, 1, 2>", "gemv_kernel3<1, __nv_bfloat16, 1>"]
    assert "| 34.00 | 53.48 | 1.57 | 14 | (128, 6, 1) |" in out
    assert "20.00" not in out  # the first step's FP8 GEMV


def test_time_alone(tmp_path, tool_output):
    csv = tmp_path / "ncu.csv"
    write_csv(csv, with_bytes=False)
    out = tool_output("decode_profile.py", csv)
    assert out.startswith("decode step: 4 kernels, 384 us of kernel time (serialized under ncu)\n")
    assert "| kind | us | kernels | share |\n" in out
    assert "MB read" not in out


def test_the_wgmma_gemv_has_a_kind_of_its_own(tmp_path, tool_output, monkeypatch):
    # As CUPTI / ncu name it (enum cast, bool argument): not "other".
    wgmma = ("void clawmine::backend::cuda::<unnamed>::gemv_wgmma_kernel<(clawmine::backend::cuda::WFmt)3, 8, 1>"
             "(GemmArgs, float *, unsigned int *)", 13, "(512, 1, 1)", 10000, 33_554_432)
    monkeypatch.setattr(sys.modules[__name__], "KERNELS", KERNELS[:5] + [wgmma] + KERNELS[7:])
    csv = tmp_path / "ncu.csv"
    write_csv(csv, with_bytes=True)
    out = tool_output("decode_profile.py", csv)
    assert "| wgmma GEMV (one-token FP8 projections, the shared expert's gate/up) | 10.0 | 1 |" in out
    assert "| other (swiglu, attention_index, add, embed, ...) | 4.0 | 1 |" in out  # the embedding alone


def test_a_csv_without_a_decode_step_is_a_clear_error(tmp_path, run_tool):
    csv = tmp_path / "ncu.csv"
    csv.write_text(HEADER + "\n" + '"0","1","clawmine","h","void f()","1","13","(1, 1, 1)","(1, 1, 1)","0","9.0","s",'
                   '"gpu__time_duration.sum","ns","1,000"\n')
    r = run_tool("decode_profile.py", csv)
    assert r.returncode != 0
    assert "no embed_kernel" in r.stderr


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
