// The `clawmine` binary: parses the command line and runs one subcommand. All work lives in
// the libraries; this file only maps failures to a one-line message and an exit code.
#include <cstdio>
#include <exception>

#include "cli/commands.h"
#include "core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"clawmine: DeepSeek V4 inference engine and OpenAI-compatible server"};
  app.require_subcommand(1);
  clawmine::cli::add_info_command(app);
  clawmine::cli::add_logits_command(app);
  clawmine::cli::add_generate_command(app);
  clawmine::cli::add_tokenizer_commands(app);
  clawmine::cli::add_serve_command(app);
  clawmine::cli::add_doctor_command(app);
  clawmine::cli::add_perplexity_command(app);
  clawmine::cli::add_quantize_command(app);
  clawmine::cli::add_bench_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const clawmine::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
