#include "cli/commands.h"
#include "core/error.h"

namespace clawmine::cli {

void add_generate_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("generate", "(not implemented yet)");
  cmd->callback([] { throw Error("'generate' is not implemented yet"); });
}

}  // namespace clawmine::cli
