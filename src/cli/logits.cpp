#include "cli/commands.h"
#include "core/error.h"

namespace clawmine::cli {

void add_logits_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("logits", "(not implemented yet)");
  cmd->callback([] { throw Error("'logits' is not implemented yet"); });
}

}  // namespace clawmine::cli
