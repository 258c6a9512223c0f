#include "cli/commands.h"
#include "core/error.h"

namespace clawmine::cli {

void add_info_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("info", "(not implemented yet)");
  cmd->callback([] { throw Error("'info' is not implemented yet"); });
}

}  // namespace clawmine::cli
