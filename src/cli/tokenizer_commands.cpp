#include "cli/commands.h"
#include "core/error.h"

namespace clawmine::cli {

void add_tokenizer_commands(CLI::App& app) {
  auto* cmd = app.add_subcommand("tokenize", "(not implemented yet)");
  cmd->callback([] { throw Error("'tokenize' is not implemented yet"); });
}

}  // namespace clawmine::cli
