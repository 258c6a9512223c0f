// Subcommands of the one `clawmine` binary. Each adds itself to the CLI11 app; its callback
// runs the command and throws clawmine::Error on bad input, which apps/clawmine.cpp prints
// as one line and turns into a non-zero exit.
#pragma once

#include <CLI/CLI.hpp>

namespace clawmine::cli {

void add_info_command(CLI::App& app);         // cli/info.cpp: config summary of a checkpoint
void add_logits_command(CLI::App& app);       // cli/logits.cpp: all-position logits to .npy
void add_generate_command(CLI::App& app);     // cli/generate.cpp: sampling loop
void add_tokenizer_commands(CLI::App& app);   // cli/tokenizer_commands.cpp: tokenize, detokenize, chat-template
void add_serve_command(CLI::App& app);        // cli/serve.cpp: OpenAI-compatible HTTP server
void add_doctor_command(CLI::App& app);       // cli/doctor.cpp: numerics audit, calibration, accuracy, fixes
void add_perplexity_command(CLI::App& app);   // cli/perplexity.cpp: windowed perplexity on a text file
void add_quantize_command(CLI::App& app);     // cli/quantize.cpp: write FP8/MXFP4/NVFP4 checkpoints
void add_bench_command(CLI::App& app);        // cli/bench.cpp: decode/prefill speed against measured ceilings

}  // namespace clawmine::cli
