// `clawmine logits`: all-position float32 logits of a token-id sequence, written as .npy
// [T, vocab]. --chunk N feeds the ids through the cache N at a time (1: token by token).
#include "cli/commands.h"
#include "cli/model_options.h"
#include "core/log.h"
#include "diag/trace_session.h"
#include "io/npy.h"
#include "runtime/generate.h"

namespace clawmine::cli {

void add_logits_command(CLI::App& app) {
  struct Args {
    ModelOptions model;
    std::string ids, ids_file, out, trace;
    int64_t chunk = 0;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("logits", "Write all-position logits [T, vocab] float32 to a .npy file");
  args->model.add_to(*cmd);
  auto* ids = cmd->add_option("--ids", args->ids, "Comma-separated token ids");
  cmd->add_option("--ids-file", args->ids_file, "File of token ids (JSON list or separated integers)")->excludes(ids);
  cmd->add_option("--chunk", args->chunk, "Feed N tokens per forward pass through the cache (0: one pass)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--out", args->out, "Output .npy path")->required();
  cmd->add_option("--trace", args->trace, "Trace every op as JSON lines to FILE ('-': stderr); summary on stderr");
  cmd->callback([args] {
    args->model.check_available();  // flag errors before any input is read
    const auto id_list = args->ids_file.empty() ? parse_id_list(args->ids, "--ids") : read_id_file(args->ids_file, "--ids-file");
    LoadedModel m = args->model.load();
    check_ids(id_list, m.model->config().vocab_size, args->ids_file.empty() ? "--ids" : "--ids-file");
    diag::TraceSession trace(*m.backend, args->trace);
    Buffer logits = runtime::chunked_logits(*m.model, trace.backend(), id_list, args->chunk, args->model.forward_options());
    io::write_npy(args->out, logits.f32(), logits.view().shape);
    log_info("logits", "wrote ", shape_str(logits.view().shape), " to ", args->out);
  });
}

}  // namespace clawmine::cli
